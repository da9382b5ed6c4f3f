"""Names of the scratch and replaced databases a restore creates."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

SCRATCH_TAG = "__lifeboat_restore_"
REPLACED_TAG = "__lifeboat_replaced_"
STAMP = "%Y%m%d%H%M%S"
# PostgreSQL names are at most 63 bytes: leave room for the longest tag and stamp.
BASE_BYTES = 63 - len(REPLACED_TAG) - len("20250101000000")
HASH_CHARS = 8  # of sha256(full name), in place of a longer name's tail


def base(dbname: str) -> str:
    """The database's part of a generated name: the name itself when it fits, else a
    prefix plus a hash of the full name, so two long names sharing a prefix never
    share (or match the leftovers of) each other's scratch and replaced databases."""
    raw = dbname.encode()
    if len(raw) <= BASE_BYTES:
        return dbname
    digest = hashlib.sha256(raw).hexdigest()[:HASH_CHARS]
    prefix = raw[: BASE_BYTES - HASH_CHARS - 1].decode("utf-8", "ignore")
    return f"{prefix}_{digest}"


def scratch_name(dbname: str, now: datetime) -> str:
    return f"{base(dbname)}{SCRATCH_TAG}{now.strftime(STAMP)}"


def replaced_name(dbname: str, now: datetime) -> str:
    return f"{base(dbname)}{REPLACED_TAG}{now.strftime(STAMP)}"


def leftover(dbname: str, tag: str) -> re.Pattern:
    return re.compile(re.escape(base(dbname) + tag) + r"\d{14}$")
