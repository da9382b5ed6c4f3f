"""Step 1: the source. Resolve a request to one backup and check it before anything is touched."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .. import (
    backup,
    dirtar,
    dump,
    encrypt,
    manifest_key,
    naming,
    storefs,
    verify,
)
from ..errors import (
    ConfigError,
    LifeboatError,
    RestoreRefused,
    VerificationFailed,
)
from ..settings import Settings, Target
from ..status import FUTURE_SLACK, parse_time
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
    unpacked: bool = False  # `path` is the folder of a tar backup, checked as it was unpacked
    rows: dict[str, int] | None = None  # exact rows per table, when a full check read them
    warnings: list[str] = field(default_factory=list)  # e.g. newer backups passed over, and why
    pinned: storefs.Pin | None = field(default=None, repr=False)

    def pin(self) -> None:
        """Keep retention (in any process) off this file until cleanup()."""
        if self.path and not self.temporary and self.pinned is None:
            self.pinned = storefs.Pin(self.path)

    @property
    def archive(self) -> bool:
        """A directory dump packed as one tar (dirtar.py), not yet unpacked."""
        return dirtar.is_archive(self.manifest) and not self.unpacked

    def fetch(self, work_dir: str, identity: str | None = None) -> None:
        """Make the backup a local file (download remote entries, checking size and sha256).

        A tar backup (local or in S3) is streamed into a new folder under
        `work_dir` instead, decrypted with `identity` when it is encrypted; its
        size and sha256 are checked against the manifest at the stream's end,
        before anything reads the folder (dirtar.unpack).
        """
        if self.path and not self.archive:
            return
        # `.restore/<label>` (or `.drill/...`): never a link (storefs.py).
        os.makedirs(os.path.dirname(os.path.dirname(work_dir)), mode=0o700, exist_ok=True)
        storefs.ensure_dir(os.path.dirname(work_dir), "work directory")
        storefs.ensure_dir(work_dir, "work directory")
        if self.archive:
            dest = tempfile.mkdtemp(prefix="restore-", suffix=".dir", dir=work_dir)
            opened = open(self.path, "rb") if self.path else self.store.open(self.entry)  # noqa: SIM115
            with opened as src:
                dirtar.unpack(src, self.manifest, self.location, dest, identity)
            self.path, self.temporary, self.unpacked = dest, True, True
            return
        stock = self.entry.name is None  # a stock dump in S3 (s3.stock_entry): no manifest
        suffix = "" if stock else self.entry.name.ext
        fd, path = tempfile.mkstemp(prefix="restore-", suffix=suffix, dir=work_dir)
        self.path, self.temporary = path, True
        if hasattr(self.store, "download"):  # S3Store checks size and sha256 as it downloads
            os.close(fd)
            self.manifest = self.store.download(self.entry, path, self.manifest)
            if stock:  # its bytes say what it is; check_source then verifies it fully
                self.fmt, self.compression = verify.detect(path)
            return
        with os.fdopen(fd, "wb") as out, self.store.open(self.entry) as src:
            shutil.copyfileobj(src, out, dump.CHUNK)

    @property
    def encrypted(self) -> bool:
        """The manifest says the file is age-encrypted (refuses unknown methods)."""
        return encrypt.method_of(self.manifest) is not None

    def cleanup(self) -> None:
        if self.pinned is not None:
            self.pinned.close()
            self.pinned = None
        if self.temporary and self.unpacked:
            dirtar.remove(self.path)
        elif self.temporary and self.path:
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


def resolve_source(
    settings: Settings, target: Target, request: Request, now: datetime | None = None
) -> Source:
    """The backup a request points at, for one target; raises RestoreRefused when none."""
    if request.time:  # the database as it was then, from pgBackRest (pitr/)
        from ..pitr.source import source_at

        return source_at(settings, target, request, now or backup.utcnow())
    if not (request.from_s3 or request.file):
        return latest_source(settings, target, request.backup_type, now)
    source = s3_source(settings, request.from_s3) if request.from_s3 else file_source(request.file)
    backed_up = (source.manifest or {}).get("database")
    if backed_up is not None and backed_up != target.conn.dbname:
        # Named explicitly: allowed (copying data between databases), but said.
        source.warnings.append(
            f"{source.location} is a backup of database {backed_up!r}, not "
            f"{target.conn.dbname!r}; restoring it because it was named explicitly."
        )
    return source


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
    if not s3.names_backup(url):
        # Not named by lifeboat (the guide's own uploads): a stock dump, accepted as
        # --file accepts one. Its format is known once it is downloaded (fetch).
        store, entry, uploaded = s3.stock_entry(settings, url)
        return Source(
            location=url, fmt="", compression="", size=entry.size, created=uploaded,
            store=store, entry=entry,
        )  # fmt: skip
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


def latest_source(
    settings: Settings, target: Target, backup_type: str | None, now: datetime | None = None
) -> Source:
    """The newest usable backup of `target`: local first, else S3.

    Newest by the manifests' completion time, then the file name's second and
    sequence. Passed over, each with a warning: damaged manifests, backups of
    another database, and backups dated in the future (clock skew) while a
    sane one exists.
    """
    now = now or backup.utcnow()
    store = backup.store_for(settings)
    types = [backup_type] if backup_type else list(naming.SCHEDULED_TYPES)
    # Earlier versions' lossy label too: their backups are told apart by the manifest.
    labels = {target.label, naming.legacy_label(target.conn.dbname)}
    skipped: list[tuple] = []

    def candidates(found) -> list:
        return [e for e in found if e.complete and e.name.label in labels and e.name.type in types]

    picked = pick_latest(store, candidates(store.list()), target, now, skipped)
    if picked is not None:
        entry, manifest, warnings = picked
        source = file_source(entry.location)
        source.manifest = manifest
    else:
        offsite = backup.s3_store_for(settings)  # the local copy is gone: S3's newest
        picked = offsite and pick_latest(offsite, candidates(offsite.list()), target, now, skipped)
        if not picked:
            kind = backup_type or "daily/weekly/monthly"
            passed = "; ".join(why for _, why in skipped[:5])
            raise RestoreRefused(
                f"No complete {kind} backup of {target.conn.dbname} in {store.describe()}"
                + (f" (passed over: {passed})" if passed else "")
                + ".",
                "Take one with `lifeboat backup`, pass --file PATH, or pick another "
                "type with --type (restore_type).",
            )
        entry, manifest, warnings = picked
        source = s3_source(settings, entry.location)
    source.warnings += warnings
    return source


def completed_at(entry, manifest: dict) -> datetime:
    """When the backup finished, by its manifest (the file name's second otherwise)."""
    return parse_time(manifest.get("finished_at")) or entry.name.created


def is_future(entry, manifest: dict | None, now: datetime) -> bool:
    """Dated past this host's clock (beyond FUTURE_SLACK): clock skew, not the newest."""
    latest = max(entry.name.created, completed_at(entry, manifest or {}))
    return latest > now + FUTURE_SLACK


def pick_latest(store, entries: list, target: Target, now: datetime, skipped: list):
    """(entry, manifest, warnings) of the newest usable entry, or None; appends to `skipped`."""
    usable = []
    for entry in entries:
        try:
            manifest = store.read_manifest(entry)
        except LifeboatError as exc:
            skipped.append((entry, f"{entry.location} has a damaged manifest ({exc.message})"))
            continue
        if manifest["database"] != target.conn.dbname:
            if entry.name.label == target.label:  # (a legacy label is shared: no news)
                skipped.append(
                    (
                        entry,
                        f"{entry.location} is a backup of database {manifest['database']!r}, "
                        f"not {target.conn.dbname!r}",
                    )
                )
            continue
        usable.append((completed_at(entry, manifest), entry, manifest))
    if not usable:
        return None
    usable.sort(key=lambda u: (u[0], u[1].name.created, u[1].name.seq))
    sane = [u for u in usable if not is_future(u[1], u[2], now)]
    future = [u for u in usable if is_future(u[1], u[2], now)]
    _, entry, manifest = (sane or future)[-1]
    warnings = [
        f"Skipped a newer backup: {why}; restoring {entry.location} instead."
        for other, why in skipped
        if other.name > entry.name
    ]
    if future:
        newest = future[-1][1]
        ahead = human_age(completed_at(newest, future[-1][2]) - now)
        if sane:
            warnings.append(
                f"Passed over {len(future)} future-dated backup(s) (clock skew?): "
                f"{newest.location} is dated {ahead} ahead of this host's clock. "
                f"Restoring the newest one that is not; pass --file {newest.location} "
                "if the future-dated one is really wanted."
            )
        else:
            warnings.append(
                f"{entry.location} is dated {ahead} ahead of this host's clock (clock skew?); "
                "restoring it because no backup of this database has a sane date."
            )
    return entry, manifest, warnings


def disk_size(path: str) -> int:
    if os.path.isdir(path):
        return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
    return os.path.getsize(path)


def check_source(
    source: Source,
    bin_dir: str | None,
    full: bool = True,
    identity: str | None = None,
    trust: manifest_key.Trust | None = None,
) -> verify.Report:
    """Checks before anything is touched; a stock file that fails is 'not a backup'.

    With `trust`, the manifest's MAC first: a manifest changed with its file is
    refused here. With a manifest, `full=False` checks size and sha256 only: the
    file is then byte for byte what was verified when it was written, and the
    restore stream re-checks the trailer, every table's row count and what may
    reach psql (sqlguard.py) before anything is swapped in.
    """
    trusted = None
    if trust is not None and source.manifest is not None:
        trusted = trust.check(source.manifest, source.location)
    if not full and source.manifest is not None:
        report = checksum(source)
        report.checks[:0] = [trusted] if trusted else []
        return report
    try:
        report = verify.verify_file(source.path, source.manifest, bin_dir, identity=identity)
        source.rows = report.rows
        report.checks[:0] = [trusted] if trusted else []
        return report
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
    if source.path and not source.unpacked:  # unpacked: age authenticated all of it
        encrypt.probe(source.path, identity, source.location)
    return identity


def checksum(source: Source) -> verify.Report:
    report = verify.Report(source.path, manifest=source.manifest)
    manifest = source.manifest
    if source.unpacked:
        report.checks.append("size and sha256 match the manifest (checked as the tar was unpacked)")
        return report
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
