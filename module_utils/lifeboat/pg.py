"""Talking to PostgreSQL: client programs, connections, and what errors mean.

Client programs (pg_dump, psql, pg_restore) are found once, by version: the
newest installed major wins, because pg_dump must be at least the server's
major. SQL goes through psycopg 3, imported only when needed.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from . import children
from .conninfo import ConnInfo
from .errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionFailed,
    LifeboatError,
    PermissionDenied,
    ToolNotFound,
    TooManyConnections,
    VersionMismatch,
)

log = logging.getLogger("lifeboat")

INSTALL_HINT = (
    "Install the PostgreSQL client tools: `sudo apt-get install postgresql-client` "
    "(or run playbooks/provision.yml)."
)

# Catalog query for user tables in pg_dump's own quoting (format %I.%I), so
# counts taken from a dump and from a database can be compared by name. Only
# tables that hold rows ('r', partitions included): a partitioned parent holds
# none and pg_dump writes no data for it, so a dump's tables are these.
TABLES_SQL = """
SELECT format('%I.%I', n.nspname, c.relname), c.reltuples::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ({kinds})
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1
"""


def find_tool(name: str, bin_dir: str | None = None) -> str:
    """Path of a client program: `bin_dir`, else the newest /usr/lib/postgresql/N/bin, else PATH."""
    if bin_dir:  # an explicit choice is honoured or refused, never second-guessed
        path = os.path.join(bin_dir, name)
        if os.access(path, os.X_OK):
            return path
        raise ToolNotFound(
            f"{name}: command not found in {bin_dir} (lifeboat_pg_bin_dir).", INSTALL_HINT
        )
    versioned = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    versioned.sort(key=_major_of_dir, reverse=True)
    for path in versioned:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found:
        return found
    raise ToolNotFound(f"{name}: command not found on PATH.", INSTALL_HINT)


def _major_of_dir(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


def tool_version(path: str) -> str:
    """`pg_dump --version` -> '15.18'."""
    out = subprocess.run(
        [path, "--version"],
        capture_output=True,
        text=True,
        check=False,
        env=children.environment(),
    ).stdout
    match = re.search(r"(\d+(?:\.\d+)?)", out)
    return match.group(1) if match else "unknown"


def major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def _psycopg():
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "The python psycopg package (version 3) is missing on this host.",
            "Run playbooks/provision.yml, or `apt-get install python3-psycopg`, "
            "or `pip install 'psycopg[binary]'`.",
        ) from None
    return psycopg


# (setting, first server version that has it): what connect() turns off.
SESSION_TIMEOUTS = (
    ("statement_timeout", 0),
    ("idle_in_transaction_session_timeout", 90600),
    ("idle_session_timeout", 140000),
    ("transaction_timeout", 170000),
)


def timeouts_off(server_version: int) -> str:
    """PGOPTIONS for a client program's sessions, as connect() sets its own:
    pg_restore -j's workers sit idle between items, where idle_session_timeout ends them."""
    return " ".join(f"-c {name}=0" for name, since in SESSION_TIMEOUTS if server_version >= since)


def connect(conn: ConnInfo, dbname: str | None = None):
    """An autocommit psycopg connection; libpq errors become lifeboat errors."""
    psycopg = _psycopg()
    target = conn.with_dbname(dbname) if dbname else conn
    try:
        db = psycopg.connect(autocommit=True, **target.psycopg_kwargs())
        # A database's or role's timeouts (ALTER ... SET, copied to a restore's scratch
        # database too) are for the application, and none of them is fit for lifeboat:
        # its counts of a large table must not be cut short, as pg_dump's and psql's
        # loads are not (their scripts set these to 0), and its admin, write-guard and
        # main load sessions sit idle, or idle in a transaction, while a long load runs.
        # Waits for other sessions' locks stay bounded by lock_timeout (pglocks.py).
        timeouts = [name for name, since in SESSION_TIMEOUTS if db.info.server_version >= since]
        db.execute("SELECT " + ", ".join("set_config(%s, '0', false)" for _ in timeouts), timeouts)
        return db
    except psycopg.Error as exc:
        raise classify(str(exc), target) from None


def connect_some(conn: ConnInfo, wanted: int, what: str, have: int = 0) -> list:
    """Up to `wanted` connections to `conn`, for work that can use fewer: when the
    role's or the server's connection limit stops them, what opened (a warning).
    TooManyConnections only if the caller has none (`have`) and none opened."""
    opened: list = []
    try:
        while len(opened) < wanted:
            opened.append(connect(conn))
    except TooManyConnections as exc:
        if not opened and not have:
            raise
        log.warning(
            "%s over %d connection(s), not %d: %s",
            what,
            have + len(opened),
            have + wanted,
            exc.message,
        )
    except BaseException:
        for db in opened:
            db.close()
        raise
    return opened


def classify(message: str, conn: ConnInfo, action: str = "connect to") -> LifeboatError:
    """Turn libpq error text into a typed error with a next step."""
    return explain(message, conn, action) or ConnectionFailed(
        f"Failed to {action} {conn.where()}: {' '.join(message.split())}",
        "Check the server log for details.",
    )


def explain(message: str, conn: ConnInfo, action: str) -> LifeboatError | None:
    """The typed error for a known libpq / pg_dump failure, else None."""
    text = " ".join(message.split())
    where = conn.where()
    lowered = text.lower()
    if (
        "password authentication failed" in lowered
        or "no password supplied" in lowered
        or "authentication failed" in lowered
    ):
        return AuthenticationFailed(
            f"Failed to {action} {where}: authentication failed.",
            "Check the user and password in DATABASE_URL (percent-encode special characters, "
            "e.g. @ as %40) and the server's pg_hba.conf.",
        )
    if (
        "connection refused" in lowered
        or "could not connect" in lowered
        or "could not translate host name" in lowered
        or "timeout expired" in lowered
        or ("no such file or directory" in lowered and "socket" in lowered)
        or "the database system is shutting down" in lowered
        or "server closed the connection unexpectedly" in lowered
        or "terminating connection" in lowered
    ):
        return ConnectionFailed(
            f"Failed to {action} {where}: {text}",
            "Check that PostgreSQL is running (`sudo systemctl status postgresql`) and that "
            "`psql \"$DATABASE_URL\" -c 'SELECT version();'` works from this host.",
        )
    if (
        "permission denied" in lowered
        or "must be owner" in lowered
        or "must be superuser" in lowered
    ):
        return PermissionDenied(f"Failed to {action} {where}: {text}", denied_hint(text, conn))
    if "would be affected by row-level security" in lowered:
        table = re.search(r'row-level security policy for table "?([^"]+?)"?(?: |$)', text)
        return PermissionDenied(
            f"Failed to {action} {where}: {text}",
            f"Table {table.group(1) if table else '(above)'} forces row-level security, so "
            "even its owner reads only some rows and a dump would be incomplete. Back up as "
            f"a role with BYPASSRLS (a superuser runs `ALTER ROLE {quote_ident(conn.user)} "
            "BYPASSRLS;`) or as a superuser.",
        )
    if "server version mismatch" in lowered or "aborting because of server version" in lowered:
        return VersionMismatch(
            f"Failed to {action} {where}: {text}",
            "pg_dump must be at least the server's major version: install a newer "
            "postgresql-client (the postgresql_client role can add the PGDG repository), "
            "or point lifeboat_pg_bin_dir at it.",
        )
    if (
        "too many connections" in lowered
        or "too many clients" in lowered
        or "connection slots are reserved" in lowered
    ):
        return TooManyConnections(
            f"Failed to {action} {where}: {text}",
            "The role's CONNECTION LIMIT or the server's max_connections is reached. A "
            "restore or drill needs 2 connections at least, 3 with a pre-restore backup "
            "(more make it faster, up to lifeboat_jobs + 3): close idle sessions, or raise "
            "the limit (`ALTER ROLE "
            f"{quote_ident(conn.user or 'role')} CONNECTION LIMIT n;`, max_connections).",
        )
    if "not currently accepting connections" in lowered:
        # ALLOW_CONNECTIONS false: what a restore killed during its swap leaves when
        # its journal is gone (with the journal, lifeboat repairs it itself).
        return ConnectionFailed(
            f"Failed to {action} {where}: the database refuses connections "
            "(ALLOW_CONNECTIONS false).",
            "If no restore is running (`lifeboat status`), a restore was interrupted in its "
            f'swap: as the owner run `ALTER DATABASE "{conn.dbname}" WITH ALLOW_CONNECTIONS '
            "true;` from another database (psql -d postgres), then run again.",
        )
    if "does not exist" in lowered and "database" in lowered:
        return ConnectionFailed(
            f"Failed to {action} {where}: {text}",
            "Check the database name at the end of DATABASE_URL.",
        )
    return None


_DENIED = re.compile(
    r"permission denied for (schema|table|sequence|view|materialized view|"
    r"large object|function|database) (.+?)(?: pg_dump:|$| DETAIL| HINT)"
)
_QUERY_OBJECT = re.compile(r"Query was: LOCK TABLE (.+?) IN ")


def quote_ident(name: str | None) -> str:
    name = name or "your_user"
    return name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else '"' + name.replace('"', '""') + '"'


def denied_hint(text: str, conn: ConnInfo) -> str:
    """What to grant, read from the server's own message: the object and privilege denied."""
    user = quote_ident(conn.user)
    read_all = (
        "or back up as a role that reads everything (a superuser, or a member of "
        "pg_read_all_data on PostgreSQL 14+): owning the database does not give access "
        "to other roles' schemas and tables."
    )
    match = _DENIED.search(text)
    if match is None:
        if "must be owner" in text.lower() or "must be superuser" in text.lower():
            return f"The operation needs the object's owner or a superuser (above); {read_all}"
        return f"Grant {user} the privilege named above, {read_all}"
    kind, name = match.group(1), match.group(2).strip().strip('"')
    if kind == "schema":
        schema = quote_ident(name)
        return (
            f"{user} lacks USAGE on schema {schema}, which another role owns. Have its owner "
            f"(or a superuser) run `GRANT USAGE ON SCHEMA {schema} TO {user}; GRANT SELECT ON "
            f"ALL TABLES IN SCHEMA {schema} TO {user}; GRANT SELECT ON ALL SEQUENCES IN SCHEMA "
            f"{schema} TO {user};`, {read_all}"
        )
    if kind == "database":
        return (
            f"Have the owner of database {name} run "
            f"`GRANT CONNECT ON DATABASE {quote_ident(name)} TO {user};`."
        )
    if kind == "large object":
        return (
            f"{user} lacks SELECT on large object {name}: have its owner run "
            f"`GRANT SELECT ON LARGE OBJECT {name} TO {user};`, {read_all}"
        )
    if kind == "function":
        return f"{user} lacks EXECUTE on function {name}: have its owner grant it, {read_all}"
    query = _QUERY_OBJECT.search(text)
    obj = query.group(1) if query else quote_ident(name)
    noun = "SEQUENCE " if kind == "sequence" else ""
    return (
        f"{user} lacks SELECT on {kind} {obj}: have its owner (or a superuser) run "
        f"`GRANT SELECT ON {noun}{obj} TO {user};`, {read_all}"
    )


def server_version(db) -> str:
    return db.execute("SHOW server_version").fetchone()[0].split()[0]


def table_estimates(db, partitioned: bool = False) -> dict[str, int]:
    """Per-table row estimates from the planner statistics (-1: never analyzed).

    `partitioned` adds partitioned parents, as manifests of archives written
    before exact counts listed them."""
    kinds = "'r', 'p'" if partitioned else "'r'"
    query = TABLES_SQL.replace("{kinds}", kinds)
    return {name: int(rows) for name, rows in db.execute(query).fetchall()}


def exact_counts(db, tables) -> dict[str, int]:
    """count(*) of each table (ONLY: pg_dump copies a parent's own rows).

    FORCE ROW LEVEL SECURITY hides rows from the table's owner too, and the
    owner is who restores: the force is lifted inside a transaction that is
    rolled back, so the count sees every row and nothing is changed."""
    with db.transaction(force_rollback=True):
        forced = db.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relforcerowsecurity"
            " AND pg_has_role(c.relowner, 'USAGE') AND c.oid = ANY(%s::regclass[])",
            (list(tables),),
        ).fetchall()
        for (table,) in forced:
            db.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        tables = list(tables)
        union = " UNION ALL ".join(
            f"SELECT {i}, count(*) FROM ONLY {t}" for i, t in enumerate(tables)
        )
        return {tables[i]: n for i, n in db.execute(union).fetchall()} if tables else {}
