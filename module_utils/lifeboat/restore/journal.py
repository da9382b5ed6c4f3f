"""Crash recovery: the swap journal, and undoing what a killed restore left behind.

A restore writes a journal beside its database lock (lock.py: the store's
`.locks`, or the user's own directory) before it changes anything on the
server that must be undone: the read-only default of `--block-writes`, and
ALLOW_CONNECTIONS false at the swap. The journal is named after the
database's identity (server and name), so every lifeboat command that
touches the database finds it: a restore (`recover`), a backup or a drill
(`heal`) repairs what a killed run left, and `status` (`state`) says what
state the database is in and what to run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os

from .. import lock, storefs
from ..conninfo import ConnInfo
from ..errors import LifeboatError, LockBusy, LockTimeout
from .database import admin, databases, db_info, drop, ident, sql_lib
from .names import REPLACED_TAG, SCRATCH_TAG, leftover
from .writes import describe_block, read_only_setting, unblock

log = logging.getLogger("lifeboat")
SUFFIX = lock.JOURNAL_SUFFIX


def journal_path(lock_dir: str, conn: ConnInfo) -> str:
    return os.path.join(lock_dir, lock.key(conn) + SUFFIX)


def find(store_lock_dir: str, conn: ConnInfo) -> list[str]:
    """This database's journals, in the store's lock folder or the user's own."""
    return [
        path
        for path in (journal_path(d, conn) for d in lock.dirs(store_lock_dir))
        if os.path.lexists(path)
    ]


def write_journal(path: str, data: dict) -> None:
    # Created exclusively, never through a link, then renamed over the journal.
    storefs.write_atomic(path, json.dumps(data).encode(), "restore journal")


def update_journal(path: str, **fields) -> None:
    """Merge `fields` into the journal (a None value removes the key)."""
    state = {**read_journal(path), **fields}
    write_journal(path, {k: v for k, v in state.items() if v is not None})


def read_journal(path: str) -> dict:
    """The journal's state; {} when there is none or it is unreadable. A link is refused."""
    try:
        state = json.loads(storefs.read(path, "restore journal"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def remove(paths) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _journal_state(journals: list[str], dbname: str) -> dict:
    for path in journals:
        state = read_journal(path)
        if state.get("database") == dbname:
            return state
    return {}


def repair(db, dbname: str, state: dict) -> list[str]:
    """Put back what an interrupted restore of `dbname` changed on the server."""
    sql = sql_lib()
    done = []
    names = databases(db)
    replaced = sorted(n for n in names if leftover(dbname, REPLACED_TAG).match(n))
    if dbname not in names and replaced:
        # Cannot happen with the one-transaction swap, but a database must
        # never be left without its name: put the newest replaced one back.
        back = replaced.pop()
        db.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(back), ident(dbname)))
        done.append(f"renamed {back} back to {dbname} (a swap was interrupted)")
        names = databases(db)
    if state.get("database") != dbname:
        return done
    # The swap committed when the scratch database is gone and the replaced one is there:
    # the original is then the replaced database (kept: it may hold late writes).
    swapped = state.get("scratch") not in names and state.get("replaced") in names
    original = state["replaced"] if swapped else dbname
    if state.get("allow_connections"):
        for name in dict.fromkeys((dbname, original)):
            info = db_info(db, name)
            if info and not info.allowconn:
                db.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(name))
                )
                done.append(f"re-allowed connections to {name} (a swap was interrupted)")
    if state.get("read_only") is not None:
        for name in dict.fromkeys((original, dbname)):
            if name in names and unblock(db, name, state["read_only"]):
                done.append(
                    f"made {name} writable again (--block-writes of an interrupted restore)"
                )
    if swapped:
        done.append(
            f"the restore had swapped in the new {dbname}; the previous one is kept as "
            f"{original} (drop it when no longer needed)"
        )
    return done


def recover(db, dbname: str, journals: list[str], work_dir: str, wait: float = 60) -> list[str]:
    """Undo what a crashed restore of `dbname` left behind; returns what was done."""
    done = repair(db, dbname, _journal_state(journals, dbname))
    names = databases(db)
    for name in names:
        if leftover(dbname, SCRATCH_TAG).match(name):
            try:
                drop(db, name, wait)
            except LockTimeout as exc:  # a leftover must not stop the restore: a new name
                log.warning("%s", exc)
                continue
            done.append(f"dropped scratch database {name} of an interrupted restore")
    for name in sorted(n for n in names if leftover(dbname, REPLACED_TAG).match(n)):
        log.warning(
            "database %s is left from an earlier restore of %s; drop it "
            "(DROP DATABASE) when it is no longer needed",
            name,
            dbname,
        )
    remove(journals)
    storefs.check_not_link(os.path.dirname(work_dir), "restore work directory")
    storefs.check_not_link(work_dir, "restore work directory")
    if os.path.isdir(work_dir):
        for name in os.listdir(work_dir):
            with contextlib.suppress(OSError):
                storefs.remove(os.path.join(work_dir, name))  # a file, or an unpacked tar
                done.append(f"removed temporary file {name}")
    return done


def heal(conn: ConnInfo, store_lock_dir: str, held: bool = False) -> list[str]:
    """For a backup or a drill: repair a swap a killed restore left half done.

    Connects only when a journal exists. `held`: the caller holds the database's
    lock; else it is tried, and a running restore (lock busy) is left alone.
    """
    journals = find(store_lock_dir, conn)
    if not journals:
        return []
    try:
        guard = contextlib.nullcontext() if held else lock.hold_database(store_lock_dir, conn)
        with guard, admin(conn, {conn.dbname}) as db:
            done = repair(db, conn.dbname, _journal_state(journals, conn.dbname))
    except LockBusy:
        return []
    remove(journals)
    return done or [f"removed the journal of an interrupted restore of {conn.dbname}"]


def state(conn: ConnInfo, store_lock_dir: str) -> str | None:
    """For `status`: what an interrupted restore left on the database, and what to run.

    None when there is no journal. Reads only; repairing is for the commands
    that work on the database (backup, restore, verify).
    """
    journals = find(store_lock_dir, conn)
    if not journals:
        return None
    dbname = conn.dbname
    journal = _journal_state(journals, dbname)
    try:
        with lock.hold_database(store_lock_dir, conn):
            pass
    except LockBusy:
        return f"{dbname}: a restore is running (its journal is {journals[0]})"
    except (LifeboatError, OSError):
        pass
    repair_cmd = f"`lifeboat backup --database {dbname}` repairs it (as does any restore or verify)"
    try:
        with admin(conn, {dbname}) as db:
            info = db_info(db, dbname)
            read_only = read_only_setting(db, dbname)
    except LifeboatError as exc:
        return (
            f"{dbname}: a restore was interrupted (journal {journals[0]}); the server could "
            f"not be checked ({exc.message}). {repair_cmd}."
        )
    problems = []
    statements = []
    if info is None:
        problems.append("the database does not exist under its name")
    elif journal.get("allow_connections") and not info.allowconn:
        problems.append("it refuses connections (ALLOW_CONNECTIONS false)")
        statements.append(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true;')
    if journal.get("read_only") is not None and read_only == "on":
        problems.append("new sessions are read-only (--block-writes)")
        statements.append(describe_block(dbname, journal["read_only"]))
    what = "; ".join(problems) or "nothing left to undo on the server"
    by_hand = f", or by hand as its owner: {' '.join(statements)}" if statements else ""
    return (
        f"{dbname}: a restore was interrupted during its swap (journal {journals[0]}): "
        f"{what}. {repair_cmd}{by_hand}"
    )
