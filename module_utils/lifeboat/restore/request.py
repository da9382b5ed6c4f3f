"""What the operator asked for, and what came of it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .. import (
    naming,
)
from ..errors import (
    ConfigError,
    RestoreRefused,
)

CONFIRM_HINT = (
    "Add --confirm (CLI) or -e confirm=true (playbook) to go ahead; "
    "see the plan first with --dry-run (or --check)."
)
SYSTEM_DATABASES = ("postgres", "template0", "template1")


@dataclass
class Request:
    """What the operator asked for; exactly one of latest / file / from_s3."""

    latest: bool = False
    file: str | None = None
    from_s3: str | None = None
    time: str | None = None  # point in time (pgBackRest, pitr/): 'YYYY-MM-DD HH:MM:SS+00'
    backup_type: str | None = None  # for --latest: None = newest scheduled backup
    target_db: str | None = None
    skip_pre_backup: bool = False
    keep_replaced: bool = False
    confirm: bool = False
    with_globals: bool = False  # apply the backup's cluster globals first (cluster_globals.py)
    block_writes: bool = False  # read-only from the pre-restore snapshot to the swap (writes.py)

    def check(self) -> None:
        chosen = [bool(self.latest), bool(self.file), bool(self.from_s3), bool(self.time)]
        if sum(chosen) != 1:
            raise ConfigError(
                "Choose exactly one source: --latest, --file PATH, --from-s3 URL or --time TIME.",
                "Playbook: -e restore_latest=true, -e restore_file=PATH, "
                "-e restore_from_s3=s3://BUCKET/KEY or -e restore_time='YYYY-MM-DD HH:MM:SS+00'.",
            )
        if self.time:
            from ..pitr.config import parse_target

            parse_target(self.time)
        if self.backup_type is not None:
            naming.check_type(self.backup_type)
        if self.target_db is not None and (
            not self.target_db or "\0" in self.target_db or len(self.target_db.encode()) > 63
        ):
            raise ConfigError(
                f"Invalid target database name {self.target_db!r}.",
                "Use a PostgreSQL database name of at most 63 bytes.",
            )
        if self.target_db in SYSTEM_DATABASES:
            # Replacing one breaks the cluster: template1 seeds every new database,
            # template0 backs every restore, postgres is where tools connect.
            raise RestoreRefused(
                f"Failed to restore into {self.target_db}: it is a system database "
                "(postgres, template0 and template1 are never replaced).",
                "Pick another name with --target-db (target_database), e.g. "
                f"{self.target_db}_restore_test.",
            )


@dataclass
class RestoreResult:
    """The outcome for one database; `error`/`hint` are set when it failed."""

    database: str
    source: str = ""
    ok: bool = False
    changed: bool = False
    pre_restore_backup: str = ""
    scratch: str = ""
    replaced: str = ""  # name of the kept replaced database, if kept
    created: bool = False  # the database did not exist before
    swap_ms: float = 0.0
    duration: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    tables: int = 0
    rows: int = 0
    block_writes: bool = False  # the database refused writes from the snapshot to the swap
    sessions_ended_at_block: int = 0  # ended by --block-writes (they reconnect read-only)
    sessions_ended: int = 0  # client sessions ended at the swap
    open_transactions: int = 0  # of those, inside a transaction (its work rolled back)
    writes_after_snapshot: list[str] = field(default_factory=list)  # seen at the swap
    recovered_to: str = ""  # point in time: commit time of the last transaction recovered
    warnings: list[str] = field(default_factory=list)
    error: str = ""
    hint: str = ""
    error_type: str = ""

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        if not self.ok:
            return f"{self.database} restore: FAILED: {self.error} {self.hint}".strip()
        what = "created" if self.created else "replaced"
        pre = f", pre-restore backup {self.pre_restore_backup}" if self.pre_restore_backup else ""
        kept = f", previous kept as {self.replaced}" if self.replaced else ""
        if self.replaced and self.writes_after_snapshot:
            kept = (
                f", WARNING: written to after the pre-restore snapshot, previous kept as "
                f"{self.replaced}"
            )
        ended = ""
        if not self.created:
            ended = f", ended {self.sessions_ended} session(s) at the swap"
            if self.open_transactions:
                ended += (
                    f" ({self.open_transactions} inside a transaction, its uncommitted work "
                    "rolled back)"
                )
        if self.block_writes:
            ended += ", writes refused from the pre-restore snapshot to the swap"
        if self.recovered_to:
            ended += f", last transaction recovered committed at {self.recovered_to}"
        return (
            f"{self.database} restored from {self.source} ({self.tables} tables, "
            f"{self.rows} rows verified, {what}, swap window {self.swap_ms:.0f} ms, "
            f"{self.duration:.1f}s{ended}{pre}{kept})"
        )
