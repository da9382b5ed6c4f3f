"""Writing inside the store without following symbolic links.

The store is owned by the backup user, but root works in it too (`become`,
`sudo lifeboat restore`). A link planted there (a lock file pointing at
/etc/shadow, a `.state` directory pointing at /root) must never redirect a
write, a truncate or a chmod: every file lifeboat writes in the store is
opened with O_NOFOLLOW, created exclusively (O_EXCL) and renamed into place,
and every directory it uses is opened with O_NOFOLLOW before use. A link is
refused with a message that says what to remove.

The store root itself may be a link (an operator's choice, made as root).

Backups being read by a restore or a drill are pinned (a shared flock on
the file or directory): retention, in any process, skips a pinned backup.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat

from .errors import BackupInUse, UnsafeStore

DIR_MODE = 0o700
FILE_MODE = 0o600
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


def refuse_link(path: str, what: str) -> UnsafeStore:
    try:
        target = f" (to {os.readlink(path)})"
    except OSError:
        target = ""
    return UnsafeStore(
        f"Failed to use {what} {path}: it is a symbolic link{target}; lifeboat never "
        "follows links inside the backup directory.",
        f"Remove the link (`rm {path}`), find out who created it, then run again. "
        "Nothing was written through it.",
    )


def _refuse_other(path: str, what: str, why: str) -> UnsafeStore:
    return UnsafeStore(
        f"Failed to use {what} {path}: {why}.",
        f"Remove it (`rm -r {path}`) so lifeboat can create its own, then run again.",
    )


def open_dir(path: str, what: str) -> int:
    """An fd for the directory `path`; refuses a link or a non-directory."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    except OSError as exc:
        if os.path.islink(path):
            raise refuse_link(path, what) from None
        if exc.errno == errno.ENOTDIR:
            raise _refuse_other(path, what, "it is not a directory") from None
        raise


def ensure_dir(path: str, what: str, mode: int = DIR_MODE, fix_mode: bool = False) -> None:
    """Create `path` (one level) unless it exists; refuse it if it is a link.

    `fix_mode` sets `mode` through the opened directory, never through a link.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, mode)
    fd = open_dir(path, what)
    try:
        if fix_mode and stat.S_IMODE(os.fstat(fd).st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def check_not_link(path: str, what: str) -> None:
    """Refuse `path` when it is a link (a missing path is fine)."""
    if os.path.islink(path):
        raise refuse_link(path, what)


def open_file(path: str, flags: int, what: str, mode: int = FILE_MODE) -> int:
    """os.open that never follows a link; an existing file must be a plain, single-link file."""
    try:
        fd = os.open(path, flags | _NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise refuse_link(path, what) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        why = "it is not a regular file" if not stat.S_ISREG(info.st_mode) else "it is hard-linked"
        raise _refuse_other(path, what, why)
    return fd


def create_exclusive(path: str, what: str, mode: int = FILE_MODE) -> int:
    """A new file at `path` for writing; whatever was there (a stale one, a link) goes first."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # unlink removes a link itself, never its target
    try:
        return open_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, what, mode)
    except FileExistsError:
        # Re-created between our unlink and open: someone is racing us.
        raise _refuse_other(path, what, "it was re-created while lifeboat replaced it") from None


def owner_for(folder: str) -> tuple[int, int] | None:
    """Who should own a file root creates in `folder`: the folder's owner, so the backup
    user can still read and replace what cron's `lifeboat pitr status` or `sudo lifeboat
    restore` wrote. None when not root (files are the writer's own)."""
    if os.geteuid() != 0:
        return None
    info = os.lstat(folder)
    return info.st_uid, info.st_gid


def write_atomic(
    path: str,
    data: bytes,
    what: str,
    mode: int = FILE_MODE,
    tmp: str | None = None,
    owner: tuple[int, int] | None = None,
) -> None:
    """Write `data` to a new temporary file, fsync, rename over `path` (a link there is
    replaced, not followed). `owner` (uid, gid): root hands the file to that user."""
    tmp = tmp or path + ".partial"
    fd = create_exclusive(tmp, what, mode)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove(path: str) -> None:
    """Remove a file or a folder lifeboat made, if it is there; a link is removed, never
    followed."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def read(path: str, what: str) -> bytes:
    fd = open_file(path, os.O_RDONLY, what)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


# --------------------------------------------------------------------------- pins


class Pin:
    """A shared flock on a backup being read; released by close()."""

    def __init__(self, path: str):
        self.fd: int | None = None
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        except OSError:
            return  # nothing to protect (gone, or a link that the reader refuses itself)
        # Blocks only while a deleter holds it; then the file may be gone.
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd).st_nlink == 0:
            os.close(fd)
            raise BackupInUse(
                f"Failed to open {path}: retention deleted it just now.",
                "Run the command again: it will pick the newest remaining backup.",
            )
        self.fd = fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@contextlib.contextmanager
def exclusive(path: str, what: str = "backup"):
    """Held while deleting `path`; raises BackupInUse when a restore or drill reads it."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError:
        yield  # a link or nothing: deleting it touches no target
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupInUse(
                f"Kept {what} {path}: a running restore or drill is reading it.",
                "Retention deletes it on a later run.",
            ) from None
        yield
    finally:
        os.close(fd)
