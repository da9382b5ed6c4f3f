"""Backup names: `<db>-<type>-backup-<YYYY-MM-DDTHH-MM-SS>[-N]<ext>`, UTC.

The layout is the guide's: `backups/<type>/<name>` with the manifest beside
it as `<name>.manifest.json`. `parse` is the inverse of `build`; names that
do not parse are not lifeboat's and are never touched.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from .errors import ConfigError

SCHEDULED_TYPES = ("daily", "weekly", "monthly")
BACKUP_TYPES = (*SCHEDULED_TYPES, "pre-restore")

# format/compression -> file extension; plain SQL is the guide's default.
EXTENSIONS = {
    ("plain", "gzip"): ".sql.gz",
    ("plain", "zstd"): ".sql.zst",
    ("plain", "none"): ".sql",
    ("custom", "gzip"): ".dump",
    ("custom", "none"): ".dump",
    ("directory", "gzip"): ".dir",
    ("directory", "none"): ".dir",
}
# A directory dump copied to S3 or encrypted is one POSIX tar stream (dirtar.py).
ARCHIVE_SUFFIX = ".tar"
# age client-side encryption (encrypt.py) appends this; plain format and tar archives.
ENCRYPTED_SUFFIX = ".age"
_ALL_EXTENSIONS = {
    *EXTENSIONS.values(),
    *(ext + ENCRYPTED_SUFFIX for (fmt, _), ext in EXTENSIONS.items() if fmt == "plain"),
    ".dir" + ARCHIVE_SUFFIX,
    ".dir" + ARCHIVE_SUFFIX + ENCRYPTED_SUFFIX,
}
MANIFEST_SUFFIX = ".manifest.json"
GLOBALS_SUFFIX = ".globals.sql"  # pg_dumpall --globals-only beside a backup (cluster_globals)
WORK_SUFFIX = ".pg_dump"  # `<name>.pg_dump.partial`: the directory pg_dump fills before the tar
PARTIAL_SUFFIX = ".partial"
TIME_FORMAT = "%Y-%m-%dT%H-%M-%S"

_NAME = re.compile(
    r"^(?P<label>.+)-(?P<type>" + "|".join(map(re.escape, BACKUP_TYPES)) + r")-backup-"
    r"(?P<stamp>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2})(?:-(?P<seq>\d+))?"
    r"(?P<ext>"
    + "|".join(sorted({re.escape(e) for e in _ALL_EXTENSIONS}, key=len, reverse=True))
    + r")$"
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.]+")
LABEL_HASH_CHARS = 10  # 40 bits of the full name's sha256: readable, and no accidental twins


@dataclass(frozen=True, order=True)
class BackupName:
    """A parsed backup file name. Orders by time, then sequence."""

    created: datetime
    seq: int
    label: str
    type: str
    ext: str

    @property
    def name(self) -> str:
        stamp = self.created.strftime(TIME_FORMAT)
        seq = f"-{self.seq}" if self.seq else ""
        return f"{self.label}-{self.type}-backup-{stamp}{seq}{self.ext}"

    @property
    def path(self) -> str:
        """Store-relative path: `<type>/<name>`."""
        return f"{self.type}/{self.name}"


def check_type(backup_type: str) -> str:
    if backup_type not in BACKUP_TYPES:
        raise ConfigError(
            f"Unknown backup type {backup_type!r}.",
            f"Use one of: {', '.join(SCHEDULED_TYPES)}.",
        )
    return backup_type


def safe_label(database: str) -> str:
    """A file-name label unique per database name (`-` is kept out: it separates fields).

    A name that is already safe is its own label (existing stores keep their
    names). Any other name gets its readable ASCII part plus a hash of the
    full name, so `my-db` and `my_db`, or two all-Cyrillic names, never share
    a label (and so never each other's backups, locks or journals).
    """
    label = legacy_label(database)
    if label == database:
        return label
    digest = hashlib.sha256(database.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{label if label != 'database' else 'db'}_{digest[:LABEL_HASH_CHARS]}"


def legacy_label(database: str) -> str:
    """The label earlier versions gave every name (lossy: names could share it).

    Only used to find backups those versions wrote, checked by their manifests.
    """
    label = _UNSAFE.sub("_", database).strip("_.")
    return label or "database"


def extension(fmt: str, compression: str, encrypted: bool = False, archive: bool = False) -> str:
    """The file extension; `archive`: a directory dump as one tar (always when encrypted)."""
    try:
        ext = EXTENSIONS[(fmt, compression)]
    except KeyError:
        raise ConfigError(
            f"Format {fmt!r} cannot be combined with compression {compression!r}.",
            "plain takes gzip, zstd or none; custom and directory take gzip or none "
            "(pg_dump compresses them itself).",
        ) from None
    if fmt == "directory" and (archive or encrypted):
        ext += ARCHIVE_SUFFIX
    if encrypted:
        if fmt not in ENCRYPTED_FORMATS:
            raise ConfigError(
                f"client-side encryption needs format plain or directory (format is {fmt}).",
                "Set lifeboat_format: plain (or directory), or empty lifeboat_encrypt_recipients.",
            )
        ext += ENCRYPTED_SUFFIX
    return ext


ENCRYPTED_FORMATS = ("plain", "directory")


def is_archive(ext: str) -> bool:
    """The name is a directory dump packed into one tar (dirtar.py)."""
    return ext.removesuffix(ENCRYPTED_SUFFIX).endswith(ARCHIVE_SUFFIX)


def build(label: str, backup_type: str, created: datetime, ext: str, seq: int = 0) -> BackupName:
    created = created.astimezone(timezone.utc).replace(microsecond=0)
    return BackupName(created, seq, label, check_type(backup_type), ext)


def parse(name: str) -> BackupName | None:
    """The BackupName for a file name, or None when lifeboat did not make it."""
    match = _NAME.match(name)
    if not match:
        return None
    created = datetime.strptime(match["stamp"], TIME_FORMAT).replace(tzinfo=timezone.utc)
    return BackupName(created, int(match["seq"] or 0), match["label"], match["type"], match["ext"])


def format_of(ext: str) -> tuple[str, str]:
    """(format, compression) for an extension; the inverse of `extension`."""
    ext = ext.removesuffix(ENCRYPTED_SUFFIX).removesuffix(ARCHIVE_SUFFIX)
    for key, value in EXTENSIONS.items():
        if value == ext:
            return key
    raise ValueError(ext)
