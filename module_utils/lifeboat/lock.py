"""One run at a time per database: an flock that dies with its process.

Backups, restores and the repair of an interrupted swap lock the database by
its identity (`identity`: server and database name as libpq resolves them),
never by its file label: a `name:` label and a bare URL of the same database
share one lock. Locks live in `<store>/.locks`; when the store cannot be
written (a read-only store and `restore --skip-pre-backup`), in the running
user's own state directory (`user_dir`), so runs of one user on one database
still exclude each other.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import pwd

from . import naming, storefs
from .errors import LockBusy, StorageError

# A store we may not write: fall back to the per-user directory.
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _open(lock_dir: str, label: str) -> int:
    os.makedirs(os.path.dirname(lock_dir), mode=0o700, exist_ok=True)  # the store root
    storefs.ensure_dir(lock_dir, "lock directory")
    path = os.path.join(lock_dir, f"{label}.lock")
    # Never through a link: the pid write below truncates the file.
    return storefs.open_file(path, os.O_RDWR | os.O_CREAT, "lock file")


@contextlib.contextmanager
def _held(fd: int, what: str):
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise LockBusy(
                f"Another lifeboat run for {what} is in progress (pid {holder}).",
                "Wait for it to finish; the lock frees itself when that process ends.",
            ) from None
        # The pid is only a courtesy for the next run's message: a full disk
        # must not turn into a failure here.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold(lock_dir: str, label: str):
    """Hold `<lock_dir>/<label>.lock`; a crashed run cannot leave it stuck."""
    with _held(_open(lock_dir, label), label):
        yield


def _libpq_defaults() -> dict[str, str]:
    """libpq's defaults for unset options (PGHOST, PGPORT, compiled-in port)."""
    try:
        from psycopg import pq

        return {
            o.keyword.decode(): o.val.decode()
            for o in pq.Conninfo.get_defaults()
            if o.val is not None
        }
    except Exception:  # no psycopg: the environment libpq would read
        return {
            k: v
            for k, v in (
                ("host", os.environ.get("PGHOST")),
                ("hostaddr", os.environ.get("PGHOSTADDR")),
                ("port", os.environ.get("PGPORT") or "5432"),
                ("service", os.environ.get("PGSERVICE")),
            )
            if v
        }


def identity(conn) -> str:
    """`host:port/dbname` of the database `conn` reaches, as libpq resolves them.

    An unset host is libpq's default (PGHOST, else the local socket), an unset
    port PGPORT or 5432; a service name stands for the server it names.
    """
    defaults = _libpq_defaults()
    params = dict(conn.params)
    host = conn.host or params.get("hostaddr") or defaults.get("host") or defaults.get("hostaddr")
    service = params.get("service") or defaults.get("service")
    if not host and service:
        host = f"service={service}"
    port = conn.port or params.get("port") or defaults.get("port") or "5432"
    return f"{host or 'local socket'}:{port}/{conn.dbname}"


def key(conn) -> str:
    """A file name for the database's lock and journal: readable, unique per identity."""
    digest = hashlib.sha256(identity(conn).encode("utf-8", "surrogateescape")).hexdigest()
    return f"{naming.safe_label(conn.dbname)}.{digest[:12]}"


def user_dir() -> str:
    """The running user's own directory for locks and journals (0700, owned by the user).

    `~/.local/state/lifeboat` (home from the password database, not $HOME, so
    cron and a login shell agree), else `/tmp/lifeboat-<uid>`. Journals must
    survive a reboot (the database keeps what a killed swap left), so the
    home directory comes first.
    """
    uid = os.geteuid()
    try:
        home = pwd.getpwuid(uid).pw_dir
    except KeyError:
        home = ""
    candidates = [os.path.join(home, ".local", "state", "lifeboat")] if home else []
    # Checked below: a directory (never a link), 0700 and ours, else refused.
    candidates.append(f"/tmp/lifeboat-{uid}")  # noqa: S108
    last = None
    for path in candidates:
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            storefs.ensure_dir(path, "lifeboat state directory", 0o700, fix_mode=True)
            if os.lstat(path).st_uid != uid:
                last = f"{path} belongs to another user"
                continue
            return path
        except OSError as exc:
            last = f"{path}: {exc.strerror or exc}"
    raise StorageError(
        f"Failed to create a private directory for lifeboat's locks: {last}.",
        "Make the backup directory writable by this user, or give the user a writable "
        "home directory.",
    )


def dirs(store_lock_dir: str) -> list[str]:
    """Every place this user's locks and journals may be: the store's, then the user's."""
    found = [store_lock_dir]
    with contextlib.suppress(StorageError, OSError):
        found.append(user_dir())
    return found


# A restore's journal (restore/journal.py) lives beside its database's lock.
JOURNAL_SUFFIX = ".restore.json"


def any_journal(store_lock_dir: str) -> bool:
    """Whether any database may have a restore journal here (`dirs`).

    Status asks this first: with none, it needs neither the restore package nor
    each database's lock key (libpq) - its usual case, paid once per host.
    """
    for lock_dir in dirs(store_lock_dir):
        try:
            names = os.listdir(lock_dir)
        except FileNotFoundError:
            continue
        except OSError:
            return True  # cannot tell: let the full check look per database
        if any(name.endswith(JOURNAL_SUFFIX) for name in names):
            return True
    return False


@contextlib.contextmanager
def hold_database(store_lock_dir: str, conn):
    """Lock the database `conn` reaches (whatever its label); yields the lock's directory.

    The store's `.locks` when it can be written, else `user_dir()`.
    """
    name = key(conn)
    where = store_lock_dir
    try:
        fd = _open(where, name)
    except OSError as exc:
        if exc.errno not in _NOT_WRITABLE:
            raise
        where = user_dir()
        fd = _open(where, name)
    with _held(fd, f"{conn.dbname} ({identity(conn)})"):
        yield where
