"""Step 1: the source. Resolve a request to one backup and check it before anything is touched."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone

from .. import (
    backup,
    dump,
    encrypt,
    naming,
    verify,
)
from ..errors import (
    ConfigError,
    RestoreRefused,
    VerificationFailed,
)
from ..settings import Settings, Target
from .request import Request


@dataclass
class Source:
    """A backup to restore from, available as a local path once `fetch`ed."""

    location: str  # for people: a path or s3:// URL
    path: str = ""  # local file or directory archive
    manifest: dict | None = None
    fmt: str = "plain"
    compression: str = "none"
    size: int = 0
    created: datetime | None = None
    store: object | None = None  # a store with open(entry) for remote entries
    entry: object | None = None
    temporary: bool = False  # `path` is a downloaded copy, removed by cleanup()

    def fetch(self, work_dir: str) -> None:
        """Make the backup a local file (download remote entries, checking size and sha256)."""
        if self.path:
            return
        os.makedirs(work_dir, mode=0o700, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="restore-", suffix=self.entry.name.ext, dir=work_dir)
        self.path, self.temporary = path, True
        if hasattr(self.store, "download"):  # S3Store checks size and sha256 as it downloads
            os.close(fd)
            self.manifest = self.store.download(self.entry, path, self.manifest)
            return
        with os.fdopen(fd, "wb") as out, self.store.open(self.entry) as src:
            shutil.copyfileobj(src, out, dump.CHUNK)

    @property
    def encrypted(self) -> bool:
        """The manifest says the file is age-encrypted (refuses unknown methods)."""
        return encrypt.method_of(self.manifest) is not None

    def cleanup(self) -> None:
        if self.temporary and self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            with contextlib.suppress(OSError):  # the per-database folder, when empty
                os.rmdir(os.path.dirname(self.path))

    def describe(self, now: datetime) -> dict:
        age = ""
        if self.created:
            age = human_age(now - self.created)
        return {
            "location": self.location,
            "format": self.fmt,
            "compression": self.compression,
            "size": self.size,
            "created": self.created.isoformat() if self.created else "",
            "age": age,
            "manifest": self.manifest is not None,
            "sha256": (self.manifest or {}).get("sha256", ""),
        }


def human_age(delta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400 * 2:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def resolve_source(settings: Settings, target: Target, request: Request) -> Source:
    """The backup a request points at, for one target; raises RestoreRefused when none."""
    if request.from_s3:
        return s3_source(settings, request.from_s3)
    if request.file:
        return file_source(request.file)
    return latest_source(settings, target, request.backup_type)


def s3_source(settings: Settings, url: str) -> Source:
    """Hook for the S3 store: `s3.entry_for_url(settings, url) -> (store, entry)`.

    The store has LocalStore's interface (read_manifest, open(entry) streaming);
    the entry is downloaded into the backup directory, checked and restored.
    """
    if not url.startswith("s3://") or len(url) <= len("s3://"):
        raise ConfigError(f"{url!r} is not an S3 URL.", "Use s3://BUCKET/backups/<type>/<file>.")
    try:
        from .. import s3

        entry_for_url = s3.entry_for_url
    except (ImportError, AttributeError):
        raise RestoreRefused(
            f"Cannot restore from {url}: S3 support is not configured in this lifeboat.",
            "Download the file and its .manifest.json and use --file, or "
            "install lifeboat with S3 support.",
        ) from None
    store, entry = entry_for_url(settings, url)
    manifest = store.read_manifest(entry) if entry.complete else None
    fmt, compression = naming.format_of(entry.name.ext)
    return Source(
        location=url,
        manifest=manifest,
        fmt=fmt,
        compression=compression,
        size=entry.size,
        created=entry.name.created,
        store=store,
        entry=entry,
    )


def file_source(path: str) -> Source:
    """A local file or directory archive: a lifeboat backup or a stock pg_dump output."""
    path = os.path.abspath(path)
    hint = "Check the path; `lifeboat list` shows the backups in the store."
    if not os.path.exists(path):
        raise RestoreRefused(f"Backup file {path} does not exist.", hint)
    if path.endswith(naming.PARTIAL_SUFFIX):
        raise RestoreRefused(
            f"{path} is an unfinished backup (.partial): it was interrupted.",
            "Restore a complete backup instead (`lifeboat list`).",
        )
    parsed = naming.parse(os.path.basename(path))
    manifest = verify.find_manifest(path)
    if parsed is not None and manifest is None:
        raise RestoreRefused(
            f"{path} has no manifest: the backup was interrupted or damaged.",
            "Restore a complete backup instead (`lifeboat list`).",
        )
    if manifest is not None:
        fmt, compression = manifest["format"], manifest["compression"]
    elif os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "toc.dat")):
            raise RestoreRefused(
                f"{path} is a directory but not a pg_dump directory archive (no toc.dat).", hint
            )
        fmt, compression = "directory", "none"
    elif os.path.isfile(path):
        fmt, compression = verify.detect(path)
    else:
        raise RestoreRefused(f"{path} is not a regular file.", hint)
    created = (
        parsed.created if parsed else datetime.fromtimestamp(os.path.getmtime(path), timezone.utc)
    )
    return Source(
        location=path,
        path=path,
        manifest=manifest,
        fmt=fmt,
        compression=compression,
        size=disk_size(path),
        created=created,
    )


def latest_source(settings: Settings, target: Target, backup_type: str | None) -> Source:
    store = backup.store_for(settings)
    types = [backup_type] if backup_type else list(naming.SCHEDULED_TYPES)
    entries = [
        e
        for e in store.list()
        if e.complete and e.name.label == target.label and e.name.type in types
    ]
    if not entries:
        from .. import s3  # the local copy is gone: fall back to the newest one in S3

        found = s3.latest_entry(settings, target.label, types)
        if found is not None:
            return s3_source(settings, found[1].location)
        kind = backup_type or "daily/weekly/monthly"
        raise RestoreRefused(
            f"No complete {kind} backup of {target.label} in {store.describe()}.",
            "Take one with `lifeboat backup`, pass --file PATH, or pick another "
            "type with --type (restore_type).",
        )
    entry = max(entries, key=lambda e: e.name.created)
    source = file_source(entry.location)
    source.manifest = store.read_manifest(entry)
    return source


def disk_size(path: str) -> int:
    if os.path.isdir(path):
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    return os.path.getsize(path)


def check_source(
    source: Source, bin_dir: str | None, full: bool = True, identity: str | None = None
) -> verify.Report:
    """Checks before anything is touched; a stock file that fails is 'not a backup'.

    With a manifest, `full=False` checks size and sha256 only: the file is then
    byte for byte what was verified when it was written, and the restore stream
    re-checks the trailer and every table's row count before psql commits.
    """
    if not full and source.manifest is not None:
        return checksum(source)
    try:
        return verify.verify_file(source.path, source.manifest, bin_dir, identity=identity)
    except VerificationFailed as exc:
        if source.manifest is None:
            raise RestoreRefused(
                f"{source.location} is not a usable PostgreSQL dump: {exc.message}",
                "Pass a lifeboat backup (`lifeboat list`) or a pg_dump .sql, .sql.gz or "
                "custom-format file.",
            ) from None
        raise


def check_decryptable(source: Source, settings: Settings) -> str | None:
    """For an encrypted source: the identity file, proven to open it (when fetched).

    Runs before the database is touched: no identity file, or one that does
    not match the recipients, refuses the restore here.
    """
    if not source.encrypted:
        return None
    identity = encrypt.check_identity_file(settings.encrypt_identity_file, source.location)
    if source.path:
        encrypt.probe(source.path, identity, source.location)
    return identity


def checksum(source: Source) -> verify.Report:
    report = verify.Report(source.path, manifest=source.manifest)
    manifest = source.manifest
    if os.path.isdir(source.path):
        sha, size, _ = dump.tree_digest(source.path)
    else:
        digest, size = hashlib.sha256(), 0
        with open(source.path, "rb") as fh:
            while block := fh.read(dump.CHUNK):
                digest.update(block)
                size += len(block)
        sha = digest.hexdigest()
    if size != manifest["size"]:
        raise VerificationFailed(
            f"Backup verification failed for {source.location}: size is {size} bytes, "
            f"manifest says {manifest['size']} (truncated or corrupt).",
            verify.REMEDY,
        )
    if sha != manifest["sha256"]:
        raise VerificationFailed(
            f"Backup verification failed for {source.location}: sha256 does not match the "
            "manifest (the file is corrupt).",
            verify.REMEDY,
        )
    report.checks.append("size and sha256 match the manifest")
    return report
