"""Database URLs: parse them, redact them, and hand credentials to libpq safely.

The password never reaches argv: client programs get the URL without it plus
a 0600 passfile (PGPASSFILE) that lives only as long as the command.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import urllib.parse
from dataclasses import dataclass, field

from .errors import ConfigError

_SCHEMES = ("postgresql", "postgres")
_URL_PASSWORD = re.compile(r"((?:postgres(?:ql)?|https?|s3)://[^:/@\s]*:)[^@\s]*@")


@dataclass(frozen=True)
class ConnInfo:
    """One database to connect to. `password` is None when libpq finds it itself."""

    dbname: str
    host: str = ""
    port: int | None = None
    user: str = ""
    password: str | None = field(default=None, repr=False)
    params: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_url(cls, url: str) -> ConnInfo:
        if not url or not isinstance(url, str):
            raise ConfigError(
                "No database URL is set.",
                "Set DATABASE_URL (or lifeboat_database_url), e.g. "
                "postgresql://user:password@host:5432/dbname.",
            )
        parts = urllib.parse.urlsplit(url.strip())
        if parts.scheme not in _SCHEMES:
            raise ConfigError(
                f"Database URL must start with postgresql://, got {parts.scheme or 'no'} scheme.",
                "Use the form postgresql://user:password@host:5432/dbname.",
            )
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(
                "Database URL has an invalid port.", "Use a number, e.g. host:5432."
            ) from None
        dbname = urllib.parse.unquote(parts.path.lstrip("/"))
        params = tuple(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        # libpq lets the query name the database or host too; honour it.
        extra = dict(params)
        dbname = extra.pop("dbname", dbname)
        if not dbname:
            raise ConfigError(
                "Database URL names no database.",
                "Add it after the host, e.g. postgresql://user@host:5432/dbname.",
            )
        password = extra.pop("password", None)
        if parts.password is not None:
            password = urllib.parse.unquote(parts.password)
        # As in libpq, host/port/user given in the query win over the netloc.
        host = extra.pop("host", None) or urllib.parse.unquote(parts.hostname or "")
        query_port = extra.pop("port", None)
        if query_port:
            try:
                port = int(query_port)
            except ValueError:
                raise ConfigError(
                    "Database URL has an invalid port.", "Use a number, e.g. ?port=5432."
                ) from None
        user = extra.pop("user", None) or urllib.parse.unquote(parts.username or "")
        return cls(
            dbname=dbname,
            host=host,
            port=port,
            user=user,
            password=password,
            params=tuple(sorted(extra.items())),
        )

    def with_dbname(self, dbname: str) -> ConnInfo:
        return ConnInfo(dbname, self.host, self.port, self.user, self.password, self.params)

    def url(self) -> str:
        """The URL without the password: safe for argv, logs and manifests."""
        quote = urllib.parse.quote
        netloc = ""
        if self.user:
            netloc = quote(self.user, safe="") + "@"
        host = self.host
        if host.startswith("/"):
            # Unix socket directory: libpq takes it as ?host=
            params = dict(self.params, host=host)
            host = ""
        else:
            params = dict(self.params)
            if ":" in host:
                host = f"[{host}]"
        netloc += quote(host, safe="[]:")
        if self.port:
            netloc += f":{self.port}"
        query = urllib.parse.urlencode(sorted(params.items()))
        return urllib.parse.urlunsplit(
            ("postgresql", netloc, "/" + quote(self.dbname, safe=""), query, "")
        )

    def where(self) -> str:
        """Short human description: `db on host:port as user`."""
        host = self.host or "local socket"
        port = f":{self.port}" if self.port else ""
        user = f" as {self.user}" if self.user else ""
        return f"{self.dbname} on {host}{port}{user}"

    def psycopg_kwargs(self) -> dict:
        kw = dict(self.params)
        kw["dbname"] = self.dbname
        if self.host:
            kw["host"] = self.host
        if self.port:
            kw["port"] = self.port
        if self.user:
            kw["user"] = self.user
        if self.password is not None:
            kw["password"] = self.password
        kw.setdefault("connect_timeout", 10)
        return kw


def _passfile_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextlib.contextmanager
def client_env(conn: ConnInfo):
    """Environment for a libpq client program: os.environ plus a private passfile.

    Yields a dict to pass as `env=`; the passfile is removed on exit.
    """
    env = dict(os.environ)
    env["PGCONNECT_TIMEOUT"] = env.get("PGCONNECT_TIMEOUT", "10")
    if conn.password is None:
        yield env
        return
    with tempfile.TemporaryDirectory(prefix="lifeboat-") as tmp:
        path = os.path.join(tmp, "pgpass")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"*:*:*:*:{_passfile_escape(conn.password)}\n")
        env["PGPASSFILE"] = path
        yield env


def redact(text: str, *secrets: str | None) -> str:
    """Remove secrets (raw and URL-encoded) and URL passwords from text."""
    for secret in secrets:
        if secret:
            for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote(secret)}:
                text = text.replace(form, "********")
    return _URL_PASSWORD.sub(r"\1********@", text)
