"""Step 6: swap the verified scratch database into the original's name."""

from __future__ import annotations

import contextlib
import logging
import os
import time

from ..conninfo import ConnInfo
from ..errors import (
    PermissionDenied,
    RestoreFailed,
)
from .database import db_info, drop, ident, privilege_hint, psycopg_lib, run_sql, sql_lib
from .journal import write_journal

log = logging.getLogger("lifeboat")


def terminate(db, name: str, conn: ConnInfo, timeout: float = 10.0) -> None:
    psycopg = psycopg_lib()
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            user = conn.user or "the restoring role"
            raise PermissionDenied(
                f"Failed to end other sessions on {name}: {' '.join(str(exc).split())}.",
                f"`GRANT pg_signal_backend TO {user};` lets it end other roles' sessions "
                "(superuser sessions must be ended by a superuser). Nothing was replaced.",
            ) from None
        left = db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchone()[0]
        if not left:
            return
        if time.monotonic() > deadline:
            raise RestoreFailed(
                f"{left} session(s) on {name} did not end within {timeout:.0f}s.",
                "Nothing was replaced. Stop the clients and run the restore again.",
            )
        time.sleep(0.02)


def swap(
    db, name: str, scratch: str, replaced: str, journal: str, conn: ConnInfo, keep: bool
) -> tuple[float, bool]:
    """Put `scratch` under `name`; returns (window in ms, whether `name` existed)."""
    sql = sql_lib()
    info = db_info(db, name)
    started = time.perf_counter()
    if info is None:
        # Complete database loss: nothing to replace, one rename.
        run_sql(
            db,
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(scratch), ident(name)),
            action=f"rename {scratch} to {name}",
            conn=conn,
        )
        return (time.perf_counter() - started) * 1000, False
    write_journal(
        journal,
        {
            "database": name,
            "allow_connections": info.allowconn,
            "scratch": scratch,
            "replaced": replaced,
        },
    )
    if info.allowconn:
        run_sql(
            db,
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(ident(name)),
            action=f"block new connections to {name}",
            conn=conn,
        )
    try:
        for attempt in range(5):
            terminate(db, name, conn)
            try:
                with db.transaction():
                    # One transaction: a crash leaves the old or the new database, never none.
                    db.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            ident(name), ident(replaced)
                        )
                    )
                    db.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            ident(scratch), ident(name)
                        )
                    )
                break
            except psycopg_lib().errors.ObjectInUse:
                if attempt == 4:
                    raise
        window = (time.perf_counter() - started) * 1000
    except BaseException as exc:
        with contextlib.suppress(Exception):
            if info.allowconn:
                db.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(name))
                )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(journal)
        psycopg = psycopg_lib()
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            raise PermissionDenied(
                f"Failed to swap {scratch} into {name}: {' '.join(str(exc).split())}.",
                privilege_hint(str(exc), conn),
            ) from None
        if isinstance(exc, psycopg.Error):
            raise RestoreFailed(
                f"Failed to swap {scratch} into {name}: {' '.join(str(exc).split())}.",
                "Nothing was replaced. Run the restore again.",
            ) from None
        raise
    with contextlib.suppress(FileNotFoundError):
        os.unlink(journal)
    if keep:
        if info.allowconn:
            db.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(replaced))
            )
    else:
        try:
            drop(db, replaced)
        except psycopg_lib().Error as exc:
            # The restore is done; a lingering old copy is the lesser harm.
            log.warning(
                "could not drop the replaced database %s: %s; drop it by hand",
                replaced,
                " ".join(str(exc).split()),
            )
    return window, True
