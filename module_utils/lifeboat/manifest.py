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
    database_properties: dict | None = None,
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
        # dbprops.DbProps: how to recreate the database itself if it is lost.
        "database_properties": database_properties,
        "lifeboat_version": __version__,
    }


def set_rows(manifest: dict, rows: dict[str, int]) -> None:
    """Exact rows per table (every table whose data the dump holds, as pg_dump names it)."""
    manifest.update(tables=rows, table_count=len(rows), rows_exact=True)


def dumps(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


# Keys a reader relies on, with their JSON types (optional ones may also be null).
TYPES = {
    "database": str,
    "type": str,
    "format": str,
    "compression": str,
    "size": int,
    "sha256": str,
    "file": str,
}
OPTIONAL_TYPES = {
    "finished_at": str,
    "started_at": str,
    "tables": dict,
    "table_count": int,
    "encryption": dict,
}
HINT = "The backup cannot be trusted; use another one (`lifeboat list` marks it damaged)."


def loads(data: bytes, where: str) -> dict:
    """Parse and validate one manifest; VerificationFailed names the file and the fault."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise VerificationFailed(
            f"Failed to read manifest {where}: not valid JSON ({exc}).", HINT
        ) from None
    if not isinstance(manifest, dict):
        raise VerificationFailed(
            f"Failed to read manifest {where}: it holds {json.dumps(manifest)[:40]}, "
            "not a JSON object.",
            HINT,
        )
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise VerificationFailed(
            f"Failed to read manifest {where}: it lacks {', '.join(missing)}.", HINT
        )
    wrong = [
        f"{key} is {type(manifest[key]).__name__}, not {kind.__name__}"
        for key, kind in [*TYPES.items(), *OPTIONAL_TYPES.items()]
        if key in manifest
        and not (key in OPTIONAL_TYPES and manifest[key] is None)
        and (not isinstance(manifest[key], kind) or isinstance(manifest[key], bool))
    ]
    if not wrong and manifest["size"] < 0:
        wrong.append("size is negative")
    if wrong:
        raise VerificationFailed(f"Failed to read manifest {where}: {'; '.join(wrong)}.", HINT)
    return manifest
