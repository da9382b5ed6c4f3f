"""Database facts and SQL helpers shared by the restore steps."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from .. import (
    dbprops,
    pg,
    pglocks,
)
from ..conninfo import ConnInfo
from ..errors import (
    ConnectionFailed,
    PermissionDenied,
    RestoreFailed,
    RestoreRefused,
)

MAINTENANCE_DBS = ("postgres", "template1")


@dataclass
class DbInfo:
    name: str
    owner: str
    encoding: str
    collate: str
    ctype: str
    provider: str
    icu_locale: str | None
    connlimit: int
    allowconn: bool
    comment: str | None
    has_acl: bool


def check_no_prepared(db, name: str, action: str, error=RestoreRefused, tail: str = "") -> None:
    """Refuse while `name` has prepared transactions (two-phase commit): PostgreSQL
    renames or drops a database only without them, and only their transaction
    manager may decide their fate, so lifeboat does not roll them back."""
    rows = db.execute(
        "SELECT gid, owner, prepared FROM pg_prepared_xacts WHERE database = %s ORDER BY prepared",
        (name,),
    ).fetchall()
    if not rows:
        return
    named = "; ".join(
        f"'{gid}' (owner {owner}, prepared {prepared:%Y-%m-%d %H:%M:%S %Z})"
        for gid, owner, prepared in rows[:3]
    )
    gid = rows[0][0]
    raise error(
        f"Failed to {action}: database {name} has {len(rows)} prepared transaction(s) "
        f"(PREPARE TRANSACTION, two-phase commit): {named}. PostgreSQL cannot rename or drop "
        "a database while one exists, and only its transaction manager may commit or roll "
        "it back.",
        f"Have its owner finish it, connected to database {name}: `COMMIT PREPARED '{gid}';` "
        f"or `ROLLBACK PREPARED '{gid}';`, then run the restore again. {tail}".strip(),
    )


def db_info(db, name: str) -> DbInfo | None:
    provider, icu = dbprops.locale_columns(db.info.server_version)
    row = db.execute(
        f"SELECT datname, pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate,"
        f" datctype, {provider}, {icu}, datconnlimit, datallowconn,"
        f" shobj_description(oid, 'pg_database'), datacl IS NOT NULL"
        f" FROM pg_database WHERE datname = %s",
        (name,),
    ).fetchone()
    return DbInfo(*row) if row else None


def databases(db) -> list[str]:
    return [r[0] for r in db.execute("SELECT datname FROM pg_database").fetchall()]


def sql_lib():
    from psycopg import sql

    return sql


def ident(name: str):
    return sql_lib().Identifier(name)


def psycopg_lib():
    import psycopg

    return psycopg


def admin(conn: ConnInfo, avoid: set[str]):
    """A connection to a maintenance database (never one we rename or drop)."""
    last = None
    for dbname in MAINTENANCE_DBS:
        if dbname in avoid:
            continue
        try:
            return pg.connect(conn, dbname)
        except ConnectionFailed as exc:
            last = exc
    raise ConnectionFailed(
        f"Failed to connect to a maintenance database (postgres or template1) on "
        f"{conn.host or 'local socket'} as {conn.user or 'the current user'}: {last.message}",
        "A restore renames databases, which must be done from another database: "
        "GRANT CONNECT ON DATABASE postgres to the role.",
    )


def run_sql(
    db,
    statement,
    params=None,
    action: str = "restore",
    conn: ConnInfo | None = None,
    hint: str = "",
):
    psycopg = psycopg_lib()
    try:
        return db.execute(statement, params)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PermissionDenied(
            f"Failed to {action}: {' '.join(str(exc).split())}.",
            hint or privilege_hint(str(exc), conn),
        ) from None
    except psycopg.Error as exc:
        raise RestoreFailed(
            f"Failed to {action}: {' '.join(str(exc).split())}.",
            hint
            or "The original database is untouched. Check the server "
            "log, then run the restore again.",
        ) from None


def privilege_hint(text: str, conn: ConnInfo | None) -> str:
    user = (conn.user if conn else "") or "the restoring role"
    lowered = text.lower()
    if "create database" in lowered:
        return (
            f"The role needs CREATEDB: `ALTER ROLE {user} CREATEDB;` (managed PostgreSQL "
            "owner roles normally have it). The original database is untouched."
        )
    if "member of role" in lowered or "set role" in lowered:
        return (
            f"Restore as the database owner, or `GRANT <owner> TO {user};`. "
            "The original database is untouched."
        )
    if "terminate" in lowered or "signal" in lowered:
        return (
            f"`GRANT pg_signal_backend TO {user};` lets it end other roles' sessions "
            "(superuser sessions must be ended by a superuser). The original database is "
            "untouched."
        )
    return "Restore as the database owner. The original database is untouched."


def drop(db, name: str, wait: float = 60) -> None:
    """DROP DATABASE, ending its sessions first.

    WITH (FORCE) ends them in one step, but refuses a role that is not a superuser
    whenever an autovacuum worker is in the database: it counts as another role's
    process. Autovacuum visits every freshly loaded database, so a drill's or a
    restore's scratch often has one. A plain DROP ends autovacuum workers itself, so
    that is the way then: end the sessions this role may end, and drop.

    A drop stalled by a session elsewhere on the server (pglocks.barrier_bounded)
    raises LockTimeout after `wait` s; the database is then left marked invalid,
    and any later drop removes it."""
    psycopg = psycopg_lib()
    statement = sql_lib().SQL("DROP DATABASE IF EXISTS {}").format(ident(name))

    def execute(statement) -> None:
        tail = f'Any later drop removes it: `DROP DATABASE "{name}"`, or the next run.'
        with pglocks.barrier_bounded(db, wait, f"drop database {name}", tail):
            db.execute(statement)

    if db.info.server_version >= 130000:
        try:
            execute(statement + sql_lib().SQL(" WITH (FORCE)"))
            return
        except psycopg.errors.InsufficientPrivilege:
            pass  # autovacuum, or a session this role may not end (the DROP says which)
    for attempt in range(3):  # a session of ours that connected meanwhile: once more
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                " AND pid <> pg_backend_pid() AND pg_has_role(usesysid, 'USAGE')",
                (name,),
            )
        try:
            execute(statement)  # waits up to 5 s for the sessions to end
            return
        except psycopg.errors.ObjectInUse:
            if attempt == 2:
                raise
