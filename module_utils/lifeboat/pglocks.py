"""No silent hang on a lock: every wait is bounded, and a timeout names the holder.

`lock_timeout` (seconds, default 60) bounds pg_dump's table locks
(`--lock-wait-timeout`, backups and the pre-restore backup) and every
statement of a restore's own sessions (`SET lock_timeout`: block writes,
swap, drop). When it runs out, the error says who holds the lock (pid, user,
application, client, since when, the query) from pg_locks/pg_stat_activity,
and what to do.

DROP DATABASE on PostgreSQL 15 and later also waits, with no lock, until every
session on the server has closed its files (a ProcSignalBarrier). A session in
`COPY ... FROM STDIN` whose client stopped sending never does, so the drop would
wait as long as that client: `barrier_bounded` ends the wait after lock_timeout
and names those sessions.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass

from . import pg
from .conninfo import ConnInfo
from .errors import LifeboatError, LockTimeout

# Locks that make a reader (pg_dump's ACCESS SHARE) wait: only ACCESS EXCLUSIVE
# (ALTER/DROP/TRUNCATE/VACUUM FULL/CLUSTER/LOCK TABLE) conflicts with it.
# A prepared transaction (PREPARE TRANSACTION, two-phase commit) holds its locks
# with no session until COMMIT or ROLLBACK PREPARED: pg_locks shows no pid for it,
# and its own transaction id lock (same virtualtransaction) leads to its gid.
_HOLDERS = """
SELECT DISTINCT a.pid, a.usename, a.application_name, host(a.client_addr),
       coalesce(a.xact_start, a.query_start, a.backend_start), a.state, a.query, {what},
       NULL::text, NULL::text
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.granted AND l.pid <> pg_backend_pid() AND {where}
UNION ALL
SELECT DISTINCT NULL::int, p.owner, NULL::text, NULL::text, p.prepared, 'prepared',
       NULL::text, {what}, p.gid, p.database::text
FROM pg_locks l
JOIN pg_locks x ON x.virtualtransaction = l.virtualtransaction AND x.pid IS NULL
     AND x.locktype = 'transactionid'
JOIN pg_prepared_xacts p ON p.transaction = x.transactionid
WHERE l.granted AND l.pid IS NULL AND {where}
ORDER BY 5
"""
TABLE_HOLDERS = _HOLDERS.format(
    what="l.relation::regclass::text",
    where="l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' AND l.database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())",
)
# ALTER DATABASE (rename, connections, settings) waits on a lock on the database object.
DATABASE_HOLDERS = _HOLDERS.format(
    what="'database ' || quote_ident(%(name)s)",
    where="l.locktype = 'object' AND l.classid = 'pg_database'::regclass AND l.objid = "
    "(SELECT oid FROM pg_database WHERE datname = %(name)s)",
)


# Sessions executing a statement while waiting for their client: COPY FROM STDIN
# whose client sends nothing. (Other roles' sessions are visible only to
# superusers and pg_read_all_stats.)
STALLED_CLIENTS = """
SELECT a.pid, a.usename, a.application_name, host(a.client_addr),
       coalesce(a.xact_start, a.query_start, a.backend_start), a.state, a.query,
       coalesce(quote_ident(a.datname), 'no database')
FROM pg_stat_activity a
WHERE a.state = 'active' AND a.wait_event = 'ClientRead' AND a.pid <> %(pid)s
ORDER BY 5
"""
# How often the watch looks, and how long a statement runs before it starts looking.
_LOOK_EVERY = 0.25
_FIRST_LOOK = 1.0


@dataclass
class Holder:
    pid: int
    user: str | None
    application: str | None
    client: str | None
    since: object
    state: str | None
    query: str | None
    what: str
    gid: str | None = None  # a prepared transaction's, which has no session (pid None)
    database: str | None = None  # the prepared transaction's

    def describe(self) -> str:
        return f"{self.what} is held by {self.session()}"

    def session(self) -> str:
        since = self.since.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if self.since else "?"
        if self.gid is not None:
            return (
                f"prepared transaction '{self.gid}' (owner {self.user or '?'}, database "
                f"{self.database}, prepared {since}; no session holds it)"
            )
        query = " ".join((self.query or "").split())
        if len(query) > 200:
            query = query[:200] + "..."
        return (
            f"pid {self.pid} (user {self.user or '?'}, application "
            f"'{self.application or ''}', client {self.client or 'local socket'}, "
            f"{self.state or 'unknown state'} since {since}): {query or '<query not visible>'}"
        )


def seconds(value: int | float) -> str:
    return f"{value:g} s"


def setting(value: int | float) -> str:
    """The value for `SET lock_timeout`."""
    return f"{int(value * 1000)}ms"


def holders(db, sql: str = TABLE_HOLDERS, **params) -> list[Holder]:
    rows = db.execute(sql, params or None).fetchall()
    return [Holder(*row) for row in rows]


class _BarrierWatch(threading.Thread):
    """From its own connection, cancel `db`'s statement after `limit` s on a barrier."""

    def __init__(self, db, limit: float):
        super().__init__(name="lifeboat-barrier-watch", daemon=True)
        self.pid = db.info.backend_pid
        self.dsn = db.info.dsn
        self.password = db.info.password
        self.limit = limit
        self.done = threading.Event()
        self.stalled: list[Holder] | None = None  # set when it cancelled the statement

    def run(self) -> None:
        if self.done.wait(_FIRST_LOOK):
            return  # the usual case: finished before anyone had to look
        import psycopg

        # Watching is a courtesy: if it cannot connect, the statement waits as before.
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.dsn, password=self.password or None, autocommit=True) as watch,
        ):
            since = None
            while not self.done.is_set():
                row = watch.execute(
                    "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (self.pid,)
                ).fetchone()
                if row and row[0] == "ProcSignalBarrier":
                    since = since or time.monotonic()
                    if time.monotonic() - since >= self.limit:
                        self.stalled = holders(watch, STALLED_CLIENTS, pid=self.pid)
                        watch.execute("SELECT pg_cancel_backend(%s)", (self.pid,))
                        return
                else:
                    since = None  # a checkpoint or another wait: not what we bound
                self.done.wait(_LOOK_EVERY)


@contextlib.contextmanager
def barrier_bounded(db, limit: float, action: str, tail: str):
    """Run a statement on `db` that may wait on a barrier; LockTimeout after `limit` s."""
    import psycopg

    watch = _BarrierWatch(db, limit)
    watch.start()
    try:
        yield
    except psycopg.errors.QueryCanceled:
        watch.done.set()
        watch.join()
        if watch.stalled is None:
            raise
        raise _barrier_error(action, limit, watch.stalled, tail) from None
    finally:
        watch.done.set()
        watch.join()


def _barrier_error(action: str, waited: float, found: list[Holder], tail: str) -> LockTimeout:
    what = (
        f"Failed to {action}: waited {seconds(waited)} for every session on the server to "
        "acknowledge it (PostgreSQL 15 and later wait so), and a session in COPY ... FROM "
        "STDIN whose client stopped sending never does"
    )
    if found:
        pid = found[0].pid
        return LockTimeout(
            f"{what}: " + "; ".join(f"{h.session()} in database {h.what}" for h in found[:3]) + ".",
            f"Let that client finish or end the session (`SELECT pg_terminate_backend({pid});`). "
            f"{tail} To wait longer, raise lock_timeout (LIFEBOAT_LOCK_TIMEOUT, "
            "lifeboat_lock_timeout).",
        )
    return LockTimeout(
        f"{what} (none is visible to this role).",
        "Look for sessions `state = 'active'` waiting on `ClientRead` in pg_stat_activity as a "
        f"superuser (or GRANT pg_read_all_stats to this role to have them named). {tail}",
    )


def is_timeout(text: str) -> bool:
    """A lock wait cut short: lock_timeout, or pg_dump's --lock-wait-timeout on LOCK TABLE."""
    lowered = text.lower()
    return "lock timeout" in lowered or ("statement timeout" in lowered and "lock table" in lowered)


def timeout_error(
    action: str, waited: int | float, found: list[Holder], tail: str = "Nothing was changed."
) -> LockTimeout:
    """`Failed to <action>: waited N s for a lock ...` with the holders and the way out."""
    if found:
        named = "; ".join(h.describe() for h in found[:3])
        sessions = [h for h in found[:3] if h.gid is None]
        prepared = [h for h in found[:3] if h.gid is not None]
        pids = ", ".join(str(h.pid) for h in sessions)
        ways = []
        if sessions:
            ways.append(
                f"Ask that session to commit or roll back, or end it "
                f"(`SELECT pg_terminate_backend({sessions[0].pid});`"
                + (f" for each of {pids}" if len(sessions) > 1 else "")
                + ")"
            )
        for h in prepared:  # only its owner knows whether its work must stay
            ways.append(
                f"Have the owner of prepared transaction '{h.gid}' finish it: connected to "
                f"database {h.database}, `COMMIT PREPARED '{h.gid}';` or "
                f"`ROLLBACK PREPARED '{h.gid}';`"
            )
        hint = (
            "; ".join(ways) + f", then run again. {tail} To wait longer, raise lock_timeout "
            "(LIFEBOAT_LOCK_TIMEOUT, lifeboat_lock_timeout)."
        )
        return LockTimeout(
            f"Failed to {action}: waited {seconds(waited)} for a lock: {named}.", hint
        )
    return LockTimeout(
        f"Failed to {action}: waited {seconds(waited)} for a lock another session held "
        "(it was released before lifeboat could name it).",
        f"Run again; if it repeats, look for long transactions in pg_stat_activity. {tail}",
    )


def dump_timeout(conn: ConnInfo, stderr: str, waited: int | float) -> LifeboatError:
    """pg_dump gave up waiting for a table lock: name who holds table locks now."""
    table = re.search(r"LOCK TABLE (.+?) IN ACCESS SHARE MODE", stderr)
    try:
        with pg.connect(conn) as db:
            found = holders(db)
    except Exception:  # the report must not hide the real failure
        found = []
    if table:
        wanted = {t.strip() for t in table.group(1).split(",")}
        found = [h for h in found if h.what in wanted] or found
    return timeout_error(f"dump {conn.where()}", waited, found, "Nothing was kept.")
