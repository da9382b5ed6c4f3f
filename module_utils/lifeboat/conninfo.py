"""Connection strings: read them with libpq's rules, redact them, hand credentials over safely.

Every form libpq takes is accepted: URLs (`postgresql:///app?host=/run/postgresql`,
multi-host `postgresql://h1,h2/app`), key/value strings (`host=... dbname=...`),
`service=` (pg_service.conf), plain database names, and the PG* environment.
libpq itself parses them (libpq.so directly, or psycopg's own libpq where the
system has none); nothing here splits a connection string by hand.

The password never reaches argv: client programs get `--dbname=` with a
connection string that has no password, and read the password from a passfile
that lives in memory only (memfd; PGPASSFILE=/proc/self/fd/N), so a crash
leaves nothing on disk. Where memfd is unavailable the passfile is a 0600 file in
a directory only this user can enter, and the next run removes what a killed
run left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import stat
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import NamedTuple

from . import children
from .errors import ConfigError

FORMS_HINT = (
    "Use a URL (postgresql://user@host:5432/dbname, postgresql:///dbname?host=/run/postgresql), "
    "key/value settings (host=/run/postgresql dbname=app), service=NAME, or a database name; "
    "see docs/configuration.md."
)
# Secrets libpq takes besides the password: they have no passfile, so they
# would reach argv.
_OTHER_SECRETS = ("sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key")
_URL_PASSWORD = re.compile(r"((?:postgres(?:ql)?|https?|s3)://[^:/@\s]*:)[^@\s]*@")
_KV_PASSWORD = re.compile(r"(\b\w*password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&']+)", re.IGNORECASE)


# --------------------------------------------------------------------------- libpq


class Option(NamedTuple):
    keyword: str
    envvar: str | None
    compiled: str | None
    val: str | None
    dispchar: str


def _text(value) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


class _Psycopg:
    """libpq through psycopg, where the system has no libpq.so."""

    def __init__(self):
        from psycopg import conninfo, errors, pq

        self._pq = pq
        self._conninfo = conninfo
        self._error = errors.Error

    @staticmethod
    def _options(raw) -> list[Option]:
        return [
            Option(
                _text(o.keyword),
                _text(o.envvar),
                _text(o.compiled),
                _text(o.val),
                _text(o.dispchar),
            )
            for o in raw
        ]

    def parse(self, text: str) -> list[Option]:
        try:
            return self._options(self._pq.Conninfo.parse(text.encode()))
        except self._error as exc:
            raise ValueError(" ".join(str(exc).split())) from None

    def defaults(self) -> list[Option]:
        return self._options(self._pq.Conninfo.get_defaults())

    def make(self, params: dict[str, str]) -> str:
        return self._conninfo.make_conninfo("", **params)


class _PQconninfoOption(ctypes.Structure):
    _fields_ = [
        ("keyword", ctypes.c_char_p),
        ("envvar", ctypes.c_char_p),
        ("compiled", ctypes.c_char_p),
        ("val", ctypes.c_char_p),
        ("label", ctypes.c_char_p),
        ("dispchar", ctypes.c_char_p),
        ("dispsize", ctypes.c_int),
    ]


class _Ctypes:
    """libpq.so directly, the client programs' own (and all a provisioning Python has)."""

    def __init__(self):
        name = "libpq.so.5"  # the soname first: find_library runs ldconfig
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            lib = ctypes.CDLL(ctypes.util.find_library("pq") or name)  # OSError: no libpq
        option_p = ctypes.POINTER(_PQconninfoOption)
        lib.PQconninfoParse.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.PQconninfoParse.restype = option_p
        lib.PQconndefaults.restype = option_p
        lib.PQconninfoFree.argtypes = [option_p]
        lib.PQfreemem.argtypes = [ctypes.c_void_p]
        self._lib = lib

    def _options(self, array) -> list[Option]:
        found = []
        try:
            for item in array:
                if item.keyword is None:
                    break
                found.append(
                    Option(
                        _text(item.keyword),
                        _text(item.envvar),
                        _text(item.compiled),
                        _text(item.val),
                        _text(item.dispchar) or "",
                    )
                )
        finally:
            self._lib.PQconninfoFree(array)
        return found

    def parse(self, text: str) -> list[Option]:
        error = ctypes.c_void_p()
        array = self._lib.PQconninfoParse(text.encode(), ctypes.byref(error))
        if not array:
            message = ctypes.string_at(error.value).decode("utf-8", "replace") if error else ""
            if error:
                self._lib.PQfreemem(error)
            raise ValueError(" ".join(message.split()) or "out of memory")
        return self._options(array)

    def defaults(self) -> list[Option]:
        return self._options(self._lib.PQconndefaults())

    def make(self, params: dict[str, str]) -> str:
        text = " ".join(f"{key}={_quote(str(value))}" for key, value in params.items())
        self.parse(text)
        return text


def _quote(value: str) -> str:
    # libpq's key/value quoting: backslash-escape \ and ', quote if empty or spaced.
    value = re.sub(r"([\\'])", r"\\\1", value)
    return f"'{value}'" if not value or re.search(r"\s", value) else value


_LIBPQ = None


def libpq():
    """The system's libpq first: pg_dump, pg_restore and psql read strings with it, and it
    loads in milliseconds where importing psycopg takes 0.1 s (status on every host of a
    fleet parses its URLs but connects nowhere). psycopg's own libpq where there is none."""
    global _LIBPQ
    if _LIBPQ is None:
        try:
            _LIBPQ = _Ctypes()
        except OSError:
            try:
                _LIBPQ = _Psycopg()
            except ImportError:
                raise ConfigError(
                    "Neither psycopg nor libpq is installed on this host.",
                    "Install the PostgreSQL client (`apt-get install postgresql-client`).",
                ) from None
    return _LIBPQ


_ENV_LOCK = threading.Lock()


def _resolved(params: dict[str, str]) -> dict[str, str]:
    """What libpq takes for the settings the string leaves out: service file, then PG*, then
    the OS user. libpq only reads a service from the environment here, so it is named there
    for the duration of the call."""
    named = {"PGSERVICE": params.get("service"), "PGSERVICEFILE": params.get("servicefile")}
    named = {var: value for var, value in named.items() if value}
    with _ENV_LOCK:
        saved = {var: os.environ.get(var) for var in named}
        os.environ.update(named)
        try:
            options = libpq().defaults()
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
    found = {}
    for option in options:
        if option.val is None:
            continue
        from_env = bool(option.envvar and os.environ.get(option.envvar))
        if option.val == option.compiled and not from_env:
            continue  # a compiled-in default: not worth naming in messages
        found[option.keyword] = option.val
    return found


def _is_conninfo(text: str) -> bool:
    # libpq's own test (psql -d, pg_dump --dbname): a URI prefix or an "=".
    return "=" in text or text.startswith(("postgresql://", "postgres://"))


def _parse(text: str) -> dict[str, str]:
    try:
        options = libpq().parse(text)
    except ValueError as exc:
        message = str(exc)
        safe = redact(text)
        if safe != text:
            try:
                libpq().parse(safe)
            except ValueError as safe_exc:
                # libpq quotes the tokens it trips on: with a password about, quote none.
                message = re.sub(r'"[^"]*"', '"..."', str(safe_exc))
            else:
                raise ConfigError(
                    "Failed to read the database connection string: its password is not "
                    "valid there.",
                    "Percent-encode special characters in a URL's password (@ as %40, % as "
                    "%25, / as %2F), or keep the password in ~/.pgpass.",
                ) from None
        raise ConfigError(
            f"Failed to read the database connection string: {redact(message)}.", FORMS_HINT
        ) from None
    return {o.keyword: o.val for o in options if o.val is not None}


def _secret_keywords() -> set[str]:
    return {o.keyword for o in libpq().defaults() if o.dispchar == "*"} | set(_OTHER_SECRETS)


# --------------------------------------------------------------------------- ConnInfo


@dataclass(frozen=True)
class ConnInfo:
    """One database to connect to.

    `params` are the libpq settings as written (never the password); `dbname`,
    `host`, `port` and `user` are what libpq will use once the service file and
    the PG* environment are applied (for messages, labels and renames).
    """

    dbname: str
    host: str = ""
    port: str = ""
    user: str = ""
    password: str | None = field(default=None, repr=False)
    params: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> ConnInfo:
        """Any libpq connection string or database name; refuses an empty one."""
        if not text or not isinstance(text, str) or not text.strip():
            raise ConfigError(
                "No database connection is set.",
                "Set DATABASE_URL (or lifeboat_database_url / lifeboat_databases), e.g. "
                "postgresql://user:password@host:5432/dbname, or PGDATABASE.",
            )
        text = text.strip()
        if "://" in text.split("=", 1)[0] and not text.startswith(("postgresql://", "postgres://")):
            scheme = text.split("://", 1)[0]
            raise ConfigError(
                f"Database URL must start with postgresql://, got {scheme}://.", FORMS_HINT
            )
        params = _parse(text) if _is_conninfo(text) else {"dbname": text}
        return cls._build(params)

    from_url = parse  # the name callers have used

    @classmethod
    def from_environment(cls) -> ConnInfo:
        """The database libpq reaches with no connection string (PGDATABASE, PGSERVICE...)."""
        return cls._build({})

    @classmethod
    def _build(cls, params: dict[str, str]) -> ConnInfo:
        params = dict(params)
        password = params.pop("password", None)
        secret = sorted(set(params) & _secret_keywords())
        if secret:
            raise ConfigError(
                f"The connection string sets {', '.join(secret)}, which would reach the "
                "command line of pg_dump and psql.",
                "Remove it: use a client key without a passphrase, readable only by the "
                "backup user (chmod 600).",
            )
        for port in params.get("port", "").split(","):
            if port and not port.isdigit():
                raise ConfigError(
                    f"The database connection has an invalid port {port!r}.",
                    "Use a number, e.g. host:5432 or port=5432.",
                )
        effective = {**_resolved(params), **params}
        if password is None:
            password = effective.get("password")  # PGPASSWORD or the service file
        dbname = effective.get("dbname", "")
        if not dbname:
            raise ConfigError(
                "The database connection names no database.",
                "Name it: postgresql://user@host:5432/dbname, dbname=NAME, in the service "
                "file, or PGDATABASE.",
            )
        return cls(
            dbname=dbname,
            host=effective.get("host") or effective.get("hostaddr") or "",
            port=effective.get("port", ""),
            user=effective.get("user", ""),
            password=password,
            params=tuple(params.items()),
        )

    def with_dbname(self, dbname: str) -> ConnInfo:
        return ConnInfo(dbname, self.host, self.port, self.user, self.password, self.params)

    def conninfo(self) -> str:
        """The connection string without the password: safe for argv, logs and manifests."""
        params = {key: value for key, value in self.params if key != "dbname"}
        if self.password is not None:
            params.pop("passfile", None)  # the password we hand over must be the one used
        return libpq().make({"dbname": self.dbname, **params})

    def where(self) -> str:
        """Short human description: `db on host:port as user`."""
        host = self.host
        if not host or host.startswith(("/", "@")):
            host = f"local socket {host}".strip()
        port = f":{self.port}" if self.port else ""
        user = f" as {self.user}" if self.user else ""
        return f"{self.dbname} on {host}{port}{user}"

    def psycopg_kwargs(self) -> dict:
        kw = dict(self.params)
        kw["dbname"] = self.dbname
        if self.password is not None:
            kw["password"] = self.password
        kw.setdefault("connect_timeout", 10)
        return kw


# --------------------------------------------------------------------------- passfiles


def _passfile_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _memfd() -> int | None:
    if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.memfd_create("lifeboat-pgpass")  # close-on-exec unless passed on
    except OSError:
        return None


def private_dir() -> str:
    """`$TMPDIR/lifeboat-<uid>`: 0700, ours, not a symlink (checked, never followed)."""
    path = os.path.join(tempfile.gettempdir(), f"lifeboat-{os.geteuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise ConfigError(
            f"Failed to use {path} for a private passfile: it is not a directory only this "
            "user can enter.",
            f"Remove it (`rm -rf {path}`) and run again.",
        )
    return path


@contextlib.contextmanager
def _passfile(password: str):
    """(PGPASSFILE value, fds the child must inherit) for one child's lifetime."""
    line = f"*:*:*:*:{_passfile_escape(password)}\n".encode()
    fd = _memfd()
    if fd is not None:
        try:
            os.fchmod(fd, 0o600)  # libpq ignores a passfile others could read
            os.write(fd, line)
            yield f"/proc/self/fd/{fd}", (fd,)
        finally:
            os.close(fd)
        return
    path = os.path.join(private_dir(), f"pgpass-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(line)
        yield path, ()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


_LEGACY_DIR = re.compile(r"lifeboat-[a-z0-9_]{8}")  # tempfile.mkdtemp(prefix="lifeboat-")
_STALE_AFTER = 60.0  # seconds: an older version's run reads its passfile right after writing
_swept = False


def remove_stale_passfiles(tmpdir: str | None = None, now: float | None = None) -> list[str]:
    """Remove passfiles that killed runs left behind, if this user owns them; returns them.

    Older versions wrote $TMPDIR/lifeboat-XXXXXXXX/pgpass; the fallback here
    writes $TMPDIR/lifeboat-<uid>/pgpass-<pid>-*, stale once that process is gone.
    """
    root = tmpdir or tempfile.gettempdir()
    now = time.time() if now is None else now
    uid = os.geteuid()
    removed = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return removed
    for entry in entries:
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
                continue
            if _LEGACY_DIR.fullmatch(entry.name) and os.listdir(entry.path) == ["pgpass"]:
                path = os.path.join(entry.path, "pgpass")
                file_info = os.lstat(path)
                if (
                    stat.S_ISREG(file_info.st_mode)
                    and file_info.st_uid == uid
                    and now - file_info.st_mtime >= _STALE_AFTER
                ):
                    os.unlink(path)
                    os.rmdir(entry.path)
                    removed.append(path)
            elif entry.name == f"lifeboat-{uid}":
                for name in os.listdir(entry.path):
                    match = re.fullmatch(r"pgpass-(\d+)-[0-9a-f]+", name)
                    if match and not process_alive(int(match.group(1))):
                        os.unlink(os.path.join(entry.path, name))
                        removed.append(os.path.join(entry.path, name))
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process `pid` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def client_env(conn: ConnInfo):
    """Popen keyword arguments for a libpq client program: `subprocess.run(argv, **child)`.

    A minimal environment (children.py) plus the password, if any, in a passfile
    the child inherits as an open file and that disappears with the last process
    holding it.
    """
    global _swept
    if not _swept:
        _swept = True
        remove_stale_passfiles()
    env = children.environment(libpq=True)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    if conn.password is None:
        yield {"env": env}
        return
    with _passfile(conn.password) as (path, fds):
        env["PGPASSFILE"] = path
        yield {"env": env, "pass_fds": fds}


def redact(text: str, *secrets: str | None) -> str:
    """Remove secrets (raw and URL-encoded) and passwords in URLs and key/value strings."""
    for secret in secrets:
        if secret:
            for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)}:
                text = text.replace(form, "********")
    text = _KV_PASSWORD.sub(r"\1********", text)
    return _URL_PASSWORD.sub(r"\1********@", text)
