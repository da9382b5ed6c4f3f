"""The live server's side of archiving: what pg_stat_archiver says, and a wait
until the WAL past a target time has reached the repository."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import datetime

from .. import pg
from ..errors import PitrFailed


@dataclass
class Archiver:
    archive_mode: str
    archived_count: int
    last_archived_wal: str
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str
    last_failed_time: datetime | None
    current_wal: str  # the segment being written now
    current_offset: int  # bytes written into it
    now: datetime  # the server's clock

    @property
    def failing(self) -> bool:
        """archive_command fails now: its last failure is newer than its last success."""
        return self.last_failed_time is not None and (
            self.last_archived_time is None or self.last_failed_time > self.last_archived_time
        )


def archiver(db) -> Archiver:
    row = db.execute(
        "SELECT current_setting('archive_mode'), archived_count,"
        " coalesce(last_archived_wal, ''), last_archived_time, failed_count,"
        " coalesce(last_failed_wal, ''), last_failed_time,"
        " w.file_name, w.file_offset, now() FROM pg_stat_archiver"
        # The insert position: at a segment boundary the write position names the
        # previous segment; past a switch, the insert one is after the new page header.
        " LEFT JOIN LATERAL pg_walfile_name_offset(pg_current_wal_insert_lsn()) w"
        " ON NOT pg_is_in_recovery()"
    ).fetchone()
    return Archiver(*row[:7], row[7] or "", row[8] or 0, row[9])


def wait_archived_past(db, timeout: float, settings) -> str:
    """Write a commit record now (after any target in the past), push its WAL segment
    and wait until the archive holds it; returns that segment.

    Recovery to a time stops at the first commit after it: without one in the
    archive (a quiet server), recovery would end short of a target it has all the
    data for. pg_switch_wal needs a superuser (or a grant): without it,
    archive_timeout closes the segment.
    """
    db.execute("SELECT pg_current_xact_id()")  # a commit record stamped now
    # The segment holding the commit record's last byte: the insert position is just
    # past it (the write position may lag: synchronous_commit = off).
    segment = db.execute("SELECT pg_walfile_name(pg_current_wal_insert_lsn())").fetchone()[0]
    with contextlib.suppress(pg._psycopg().Error):
        db.execute("SELECT pg_switch_wal()")
    deadline = time.monotonic() + timeout
    while True:
        state = archiver(db)
        if state.last_archived_wal and state.last_archived_wal[8:] >= segment[8:]:
            return segment
        if time.monotonic() > deadline:
            failing = (
                f"; archive_command fails ({state.failed_count} failures, last on "
                f"{state.last_failed_wal})"
                if state.failing
                else ""
            )
            raise PitrFailed(
                f"Failed to archive the WAL up to now: segment {segment} did not reach "
                f"the pgBackRest repository within {timeout:.0f}s (last archived: "
                f"{state.last_archived_wal or 'none'}{failing}).",
                f"Check archiving (`pgbackrest --stanza={settings.pitr_stanza} check`, the "
                "server log); nothing was changed.",
            )
        time.sleep(0.5)
