"""Typed errors. Every message says what failed, why, and what to do next."""

from __future__ import annotations


class LifeboatError(Exception):
    """Root of every error lifeboat raises on purpose.

    `hint` is the next step for the person on call; `str(err)` joins both.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}".strip()


class ConfigError(LifeboatError):
    """Settings are missing or invalid; nothing was run."""

    exit_code = 2


class ToolNotFound(LifeboatError):
    """A PostgreSQL client program (pg_dump, psql, pg_restore) is missing."""


class ConnectionFailed(LifeboatError):
    """The server did not answer (down, wrong host or port, firewall)."""


class TooManyConnections(ConnectionFailed):
    """No connection slot left: the role's CONNECTION LIMIT or the server's max_connections."""


class AuthenticationFailed(LifeboatError):
    """The server refused the credentials."""


class PermissionDenied(LifeboatError):
    """The role lacks a privilege the operation needs."""


class VersionMismatch(LifeboatError):
    """pg_dump is older than the server."""


class DumpFailed(LifeboatError):
    """pg_dump failed or produced incomplete output."""


class DiskFull(LifeboatError):
    """The backup directory ran out of space."""


class StorageError(LifeboatError):
    """The backup store could not be read or written."""


class UploadFailed(StorageError):
    """An off-site copy could not be written."""


class UnsafeStore(StorageError):
    """A path inside the store is a symbolic link (or a hard-linked file): never followed."""


class BackupInUse(StorageError):
    """A backup is being read by a running restore or drill; it is not deleted."""


class VerificationFailed(LifeboatError):
    """A backup file is corrupt, truncated or does not match its manifest."""


class LockBusy(LifeboatError):
    """Another lifeboat run holds the lock for this database."""


class LockTimeout(LifeboatError):
    """A PostgreSQL lock was not granted within lock_timeout; the message names its holder."""


class RestoreRefused(LifeboatError):
    """A restore was refused before anything was touched."""


class RestoreFailed(LifeboatError):
    """A restore failed; the original database is untouched."""


class PitrFailed(LifeboatError):
    """pgBackRest or a point-in-time restore's temporary instance failed; nothing changed."""
