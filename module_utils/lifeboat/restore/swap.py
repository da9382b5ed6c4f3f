"""Step 6: swap the verified scratch database into the original's name."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

from .. import pglocks
from ..conninfo import ConnInfo
from ..errors import (
    LockTimeout,
    PermissionDenied,
    RestoreFailed,
)
from .database import (
    check_no_prepared,
    db_info,
    drop,
    ident,
    privilege_hint,
    psycopg_lib,
    run_sql,
    sql_lib,
)
from .journal import remove, update_journal
from .writes import TRUE, Watch, read_only_setting, set_read_only, unblock

log = logging.getLogger("lifeboat")


@dataclass
class Swapped:
    """What the swap did: its window, who it ended, what was written meanwhile."""

    window_ms: float = 0.0
    existed: bool = True
    sessions_ended: int = 0
    open_transactions: int = 0  # of those, sessions inside a transaction (rolled back)
    writes: list[str] = field(default_factory=list)  # since the pre-restore snapshot
    kept: bool = False  # the replaced database was kept


def terminate(
    db, name: str, conn: ConnInfo, timeout: float = 10.0, spare: int | None = None
) -> tuple[int, int]:
    """End every other session on `name` but `spare`; returns (client sessions ended,
    of them inside a transaction, whose uncommitted work is rolled back)."""
    psycopg = psycopg_lib()
    deadline = time.monotonic() + timeout
    ended: set[int] = set()
    in_transaction: set[int] = set()
    while True:
        # Sessions of a role only: an autovacuum worker has none, counts as a
        # superuser process (a non-superuser may not signal it), and the server
        # itself ends it when the database is renamed or dropped. (backend_type
        # would hide other roles' sessions: it is NULL for them to a non-superuser.)
        rows = db.execute(
            "SELECT pid, xact_start IS NOT NULL, true"
            " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
            " AND pid IS DISTINCT FROM %s AND usesysid IS NOT NULL",
            (name, spare),
        ).fetchall()
        if not rows:
            return len(ended), len(in_transaction)
        if time.monotonic() > deadline:
            raise RestoreFailed(
                f"{len(rows)} session(s) on {name} did not end within {timeout:.0f}s.",
                "Nothing was replaced. Stop the clients and run the restore again.",
            )
        for pid, transaction, client in rows:
            if client and pid not in ended:
                ended.add(pid)
                if transaction:
                    in_transaction.add(pid)
        try:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid",
                ([row[0] for row in rows],),
            )
        except psycopg.errors.InsufficientPrivilege as exc:
            user = conn.user or "the restoring role"
            raise PermissionDenied(
                f"Failed to end other sessions on {name}: {' '.join(str(exc).split())}.",
                f"`GRANT pg_signal_backend TO {user};` lets it end other roles' sessions "
                "(superuser sessions must be ended by a superuser). Nothing was replaced.",
            ) from None
        time.sleep(0.02)


class Guard:
    """Writes from the pre-restore snapshot to the swap (writes.py): watched, and with
    --block-writes refused; `undo` puts the database back when the restore fails."""

    def __init__(self, db, conn: ConnInfo, name: str, journal: str, block: bool, watch: bool):
        self.db, self.conn, self.name, self.journal = db, conn, name, journal
        self.block, self.watching = block, watch
        self.blocked: dict | None = None  # what block-writes changed, to undo
        self.watch: Watch | None = None
        self.sessions_ended = 0  # ended so that they reconnect read-only

    def start(self) -> None:
        """At the pre-restore snapshot (right before its pg_dump starts)."""
        if self.block:
            previous = read_only_setting(self.db, self.name)
            if previous is None or previous.lower() not in TRUE:
                self.blocked = {"previous": previous}
                # Journal first: a run killed from here on is repaired by the next one.
                update_journal(
                    self.journal, database=self.name, read_only=self.blocked, phase="block-writes"
                )
                set_read_only(self.db, self.name, "on")
            self.sessions_ended, _ = terminate(self.db, self.name, self.conn)
            log.info(
                "block-writes: %s is read-only for new sessions until the swap; ended %d "
                "session(s)",
                self.name,
                self.sessions_ended,
            )
        if self.watching:
            self.watch = Watch(self.conn, self.name)
            self.watch.mark()

    def fix_copy(self, scratch: str) -> None:
        """The new database must not inherit the block."""
        unblock(self.db, scratch, self.blocked)

    def undo(self) -> None:
        """The restore failed before the swap: the database as it was."""
        if self.watch is not None:
            self.watch.close()
        unblock(self.db, self.name, self.blocked)
        remove([self.journal])


def wait_gone(db, pid: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not db.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            return
        time.sleep(0.01)


def swap(
    db,
    name: str,
    scratch: str,
    replaced: str,
    journal: str,
    conn: ConnInfo,
    keep: bool,
    watch: Watch | None = None,
    blocked: dict | None = None,
    lock_timeout: float = 60,
) -> Swapped:
    """Put `scratch` under `name`. With a `watch`, keep the replaced database when
    anything was written since its mark; `blocked`: what `writes.block` set on `name`."""
    sql = sql_lib()
    info = db_info(db, name)
    outcome = Swapped()
    started = time.perf_counter()
    if info is None:
        # Complete database loss: nothing to replace, one rename.
        run_sql(
            db,
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(scratch), ident(name)),
            action=f"rename {scratch} to {name}",
            conn=conn,
        )
        outcome.window_ms, outcome.existed = (time.perf_counter() - started) * 1000, False
        return outcome
    # One prepared during the load: refused before the application is cut off.
    check_no_prepared(
        db, name, f"swap {scratch} into {name}", RestoreFailed, "Nothing was replaced."
    )
    update_journal(
        journal,
        database=name,
        allow_connections=info.allowconn,
        scratch=scratch,
        replaced=replaced,
        phase="swap",
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
            spare = watch.pid if watch is not None and attempt == 0 else None
            ended, in_transaction = terminate(db, name, conn, spare=spare)
            outcome.sessions_ended += ended
            outcome.open_transactions += in_transaction
            if watch is not None and attempt == 0:
                # Every other session is gone and has flushed its statistics.
                outcome.writes += watch.changes()
                watch.close()
                wait_gone(db, watch.pid)
            elif watch is not None and ended:
                outcome.writes.append(
                    f"{ended} session(s) connected during the swap and were ended; "
                    "what they wrote is in the replaced database"
                )
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
        outcome.window_ms = (time.perf_counter() - started) * 1000
    except BaseException as exc:
        with contextlib.suppress(Exception):
            if info.allowconn:
                db.execute(
                    sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(name))
                )
                update_journal(journal, allow_connections=None)
        psycopg = psycopg_lib()
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            raise PermissionDenied(
                f"Failed to swap {scratch} into {name}: {' '.join(str(exc).split())}.",
                privilege_hint(str(exc), conn),
            ) from None
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            found = []
            with contextlib.suppress(Exception):
                found = pglocks.holders(db, pglocks.DATABASE_HOLDERS, name=name)
            raise pglocks.timeout_error(
                f"swap {scratch} into {name}", lock_timeout, found, "Nothing was replaced."
            ) from None
        if isinstance(exc, psycopg.Error):
            raise RestoreFailed(
                f"Failed to swap {scratch} into {name}: {' '.join(str(exc).split())}.",
                "Nothing was replaced. Run the restore again.",
            ) from None
        raise
    update_journal(journal, phase="swapped")
    log.info(
        "swap: ended %d session(s) on %s, %d inside a transaction (rolled back)",
        outcome.sessions_ended,
        name,
        outcome.open_transactions,
    )
    outcome.kept = keep or bool(outcome.writes)
    if outcome.kept:
        # The old database as it was: connections and its own read-only default back.
        if info.allowconn:
            db.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(ident(replaced))
            )
        unblock(db, replaced, blocked)
    else:
        try:
            drop(db, replaced, lock_timeout)
        except LockTimeout as exc:  # it names the session in the way, and what to do
            log.warning("the restore is done, but the replaced database is left: %s", exc)
        except psycopg_lib().Error as exc:
            # The restore is done; a lingering old copy is the lesser harm.
            log.warning(
                "could not drop the replaced database %s: %s; drop it by hand",
                replaced,
                " ".join(str(exc).split()),
            )
    return outcome
