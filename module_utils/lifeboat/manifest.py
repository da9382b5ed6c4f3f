"""One JSON manifest per backup, written last: no manifest, no backup.

It records what a restore and a verification need to trust the file, and
never a secret (the database is named by its password-less URL).
"""

from __future__ import annotations

import json
import socket
from datetime import datetime

from . import __version__
from .errors import VerificationFailed
from .units import iso

SCHEMA = 1
REQUIRED = ("database", "type", "format", "compression", "size", "sha256", "file")


def build(
    *,
    file: str,
    database: str,
    label: str,
    url: str,
    backup_type: str,
    fmt: str,
    compression: str,
    level: int | None,
    dump,
    server_version: str,
    started: datetime,
    finished: datetime,
    tables: dict[str, int],
    rows_exact: bool,
    encryption: dict | None = None,
) -> dict:
    return {
        "schema": SCHEMA,
        "file": file,
        "database": database,
        "label": label,
        "source": url,
        "host": socket.gethostname(),
        "type": backup_type,
        "format": fmt,
        "compression": compression,
        "compression_level": level,
        "encryption": encryption,
        "size": dump.size,
        "sha256": dump.sha256,
        "uncompressed_size": dump.uncompressed_size or None,
        "files": dump.files or None,
        "pg_dump_version": dump.pg_dump_version,
        "server_version": server_version,
        "started_at": iso(started),
        "finished_at": iso(finished),
        "duration_seconds": round(dump.duration, 3),
        "table_count": len(tables),
        "rows_exact": rows_exact,
        "tables": tables,
        "lifeboat_version": __version__,
    }


def dumps(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def loads(data: bytes, where: str) -> dict:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise VerificationFailed(
            f"Manifest {where} is not valid JSON: {exc}.",
            "The backup cannot be trusted; use another one.",
        ) from None
    missing = [key for key in REQUIRED if key not in manifest]
    if not isinstance(manifest, dict) or missing:
        raise VerificationFailed(
            f"Manifest {where} lacks {', '.join(missing)}.",
            "The backup cannot be trusted; use another one.",
        )
    return manifest
