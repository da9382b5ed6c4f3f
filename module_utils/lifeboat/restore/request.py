"""What the operator asked for, and what came of it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .. import (
    naming,
)
from ..errors import (
    ConfigError,
)

CONFIRM_HINT = (
    "Add --confirm (CLI) or -e confirm=true (playbook) to go ahead; "
    "see the plan first with --dry-run (or --check)."
)
# GUCs whose stored value is a list of separately quoted items (as pg_dumpall knows).


@dataclass
class Request:
    """What the operator asked for; exactly one of latest / file / from_s3."""

    latest: bool = False
    file: str | None = None
    from_s3: str | None = None
    backup_type: str | None = None  # for --latest: None = newest scheduled backup
    target_db: str | None = None
    skip_pre_backup: bool = False
    keep_replaced: bool = False
    confirm: bool = False
    with_globals: bool = False  # apply the backup's cluster globals first (cluster_globals.py)

    def check(self) -> None:
        chosen = [bool(self.latest), bool(self.file), bool(self.from_s3)]
        if sum(chosen) != 1:
            raise ConfigError(
                "Choose exactly one source: --latest, --file PATH or --from-s3 URL.",
                "Playbook: -e restore_latest=true, -e restore_file=PATH or "
                "-e restore_from_s3=s3://BUCKET/KEY.",
            )
        if self.backup_type is not None:
            naming.check_type(self.backup_type)
        if self.target_db is not None and (
            not self.target_db or "\0" in self.target_db or len(self.target_db.encode()) > 63
        ):
            raise ConfigError(
                f"Invalid target database name {self.target_db!r}.",
                "Use a PostgreSQL database name of at most 63 bytes.",
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
    tables: int = 0
    rows: int = 0
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
        return (
            f"{self.database} restored from {self.source} ({self.tables} tables, "
            f"{self.rows} rows verified, {what}, swap window {self.swap_ms:.0f} ms, "
            f"{self.duration:.1f}s{pre}{kept})"
        )
