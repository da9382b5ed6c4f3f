"""Where backups live. A backup becomes visible only when complete.

`LocalStore` writes `<type>/<name>.partial`, fsyncs, renames it into place,
then writes `<name>.manifest.json` the same way: a reader that sees a
manifest sees a complete file. The S3 store follows the same contract.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from typing import BinaryIO

from . import manifest as manifests
from . import naming, storefs
from .errors import DiskFull, StorageError

DIR_MODE = 0o700
FILE_MODE = 0o600
# lifeboat's own folders in a store root: never links (storefs.py).
INTERNAL_DIRS = (".locks", ".state", ".restore", ".drill", ".verify")


@dataclass(frozen=True)
class Entry:
    """A backup file in a store; `complete` means its manifest is there."""

    store: str
    path: str  # `<type>/<name>`, the same in every store
    name: naming.BackupName
    size: int
    complete: bool
    location: str  # absolute path or s3:// URL, for people

    @property
    def key(self) -> str:
        return f"{self.store}:{self.path}"


def _storage_error(action: str, target: str, exc: OSError) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return DiskFull(
            f"Failed to {action} {target}: disk full (No space left on device).",
            "Free space (`df -h`), lower lifeboat_retention, or point "
            "lifeboat_backup_dir at a larger disk.",
        )
    return StorageError(
        f"Failed to {action} {target}: {exc.strerror or exc}.",
        "Check that the backup directory exists, is writable by this user "
        "and is not on a read-only filesystem.",
    )


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes) -> None:
    storefs.write_atomic(path, data, "manifest", FILE_MODE, path + naming.PARTIAL_SUFFIX)


class LocalUpload:
    """A backup being written to `<final>.partial`; commit() publishes it."""

    def __init__(self, store: LocalStore, bname: naming.BackupName):
        self.final = store.abspath(bname.path)
        self.partial = self.final + naming.PARTIAL_SUFFIX
        self._fh: BinaryIO | None = None

    def open_file(self) -> BinaryIO:
        fd = storefs.open_file(
            self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "backup file", FILE_MODE
        )
        self._fh = os.fdopen(fd, "wb", buffering=1 << 20)
        return self._fh

    def directory(self) -> str:
        """Path for pg_dump --format=directory to create."""
        return self.partial

    def commit(self, manifest: dict) -> None:
        try:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None
            else:
                # pg_dump made the folder; modes go through fds, never through a link.
                storefs.ensure_dir(self.partial, "backup directory", DIR_MODE, fix_mode=True)
                for name in os.listdir(self.partial):
                    path = os.path.join(self.partial, name)
                    fd = storefs.open_file(path, os.O_RDONLY, "backup file")
                    try:
                        os.fchmod(fd, FILE_MODE)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            os.replace(self.partial, self.final)
            _write_atomic(self.final + naming.MANIFEST_SUFFIX, manifests.dumps(manifest))
            _fsync_dir(os.path.dirname(self.final))
        except OSError as exc:
            self.abort()
            storefs.remove(self.final)
            raise _storage_error("save backup", self.final, exc) from None

    def abort(self) -> None:
        if self._fh is not None:
            # e.g. ENOSPC on the final flush: the file goes anyway
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
        storefs.remove(self.partial)


class LocalStore:
    kind = "local"

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    def abspath(self, path: str) -> str:
        return os.path.join(self.root, path)

    def describe(self) -> str:
        return self.root

    def prepare(self, backup_type: str) -> None:
        """Create `<root>/<type>` (0700) and prove we can write there."""
        target = self.abspath(backup_type)
        try:
            os.makedirs(self.root, mode=DIR_MODE, exist_ok=True)
            self.check_internal_dirs()
            storefs.ensure_dir(target, "backup type directory", DIR_MODE, fix_mode=True)
            if not os.access(target, os.W_OK):
                raise PermissionError(errno.EACCES, "Permission denied")
            probe = os.path.join(target, f".lifeboat-probe-{os.getpid()}")
            os.close(storefs.create_exclusive(probe, "probe file"))
            os.unlink(probe)
        except OSError as exc:
            raise _storage_error("write to backup directory", target, exc) from None

    def check_internal_dirs(self) -> None:
        """Refuse the store when one of lifeboat's own folders is a link (before any work)."""
        for name in INTERNAL_DIRS:
            storefs.check_not_link(self.abspath(name), "store directory")
        for backup_type in naming.BACKUP_TYPES:
            storefs.check_not_link(self.abspath(backup_type), "backup type directory")

    def lock_dir(self) -> str:
        return self.abspath(".locks")

    def unique_name(self, bname: naming.BackupName) -> naming.BackupName:
        """The same name with a sequence number if that second is taken."""
        while any(
            os.path.lexists(self.abspath(bname.path) + suffix)
            for suffix in ("", naming.PARTIAL_SUFFIX, naming.MANIFEST_SUFFIX)
        ):
            bname = naming.BackupName(
                bname.created, bname.seq + 1, bname.label, bname.type, bname.ext
            )
        return bname

    def begin(self, bname: naming.BackupName) -> LocalUpload:
        return LocalUpload(self, bname)

    def list(self) -> list[Entry]:
        """Every backup lifeboat named in this store; raises when it cannot look."""
        entries = []
        if not os.path.isdir(self.root):
            return entries
        for backup_type in naming.BACKUP_TYPES:
            folder = self.abspath(backup_type)
            # A linked type folder would let retention delete in its target.
            storefs.check_not_link(folder, "backup type directory")
            try:
                names = set(os.listdir(folder))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _storage_error("list backups in", folder, exc) from None
            for name in names:
                parsed = naming.parse(name)
                if parsed is None or parsed.type != backup_type:
                    continue
                path = os.path.join(folder, name)
                entries.append(
                    Entry(
                        store=self.kind,
                        path=parsed.path,
                        name=parsed,
                        size=_size(path),
                        complete=name + naming.MANIFEST_SUFFIX in names,
                        location=path,
                    )
                )
        return sorted(entries, key=lambda e: e.name)

    def read_manifest(self, entry: Entry) -> dict:
        path = entry.location + naming.MANIFEST_SUFFIX
        try:
            return manifests.loads(storefs.read(path, "manifest"), path)
        except OSError as exc:
            raise _storage_error("read manifest", path, exc) from None

    def open(self, entry: Entry) -> BinaryIO:
        return open(entry.location, "rb")

    def delete(self, entry: Entry) -> None:
        # Manifest first: a half-deleted backup must not look complete.
        # Never one a restore or drill is reading (storefs.Pin): BackupInUse.
        try:
            with storefs.exclusive(entry.location):
                storefs.remove(entry.location + naming.MANIFEST_SUFFIX)
                storefs.remove(entry.location)
                storefs.remove(entry.location + naming.GLOBALS_SUFFIX)
        except OSError as exc:
            raise _storage_error("delete", entry.location, exc) from None

    def remove_partials(self, label: str) -> list[str]:
        """Leftovers of crashed runs for `label` (call with its lock held)."""
        removed = []
        for backup_type in naming.BACKUP_TYPES:
            folder = self.abspath(backup_type)
            if os.path.islink(folder):
                continue  # never unlink through a link (prepare refuses it)
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                if not name.endswith(naming.PARTIAL_SUFFIX):
                    continue
                base = name[: -len(naming.PARTIAL_SUFFIX)]
                for suffix in (naming.MANIFEST_SUFFIX, naming.GLOBALS_SUFFIX, naming.WORK_SUFFIX):
                    base = base.removesuffix(suffix)
                parsed = naming.parse(base)
                if parsed and parsed.label == label:
                    storefs.remove(os.path.join(folder, name))
                    removed.append(os.path.join(folder, name))
        return removed


def _size(path: str) -> int:
    try:
        if os.path.isdir(path):
            return sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
        return os.path.getsize(path)
    except OSError:
        return 0
