"""Names of the scratch and replaced databases a restore creates."""

from __future__ import annotations

import re
from datetime import datetime

SCRATCH_TAG = "__lifeboat_restore_"
REPLACED_TAG = "__lifeboat_replaced_"
STAMP = "%Y%m%d%H%M%S"
# PostgreSQL names are at most 63 bytes: leave room for the longest tag and stamp.
BASE_BYTES = 63 - len(REPLACED_TAG) - len("20250101000000")


def base(dbname: str) -> str:
    raw = dbname.encode()[:BASE_BYTES]
    return raw.decode("utf-8", "ignore")


def scratch_name(dbname: str, now: datetime) -> str:
    return f"{base(dbname)}{SCRATCH_TAG}{now.strftime(STAMP)}"


def replaced_name(dbname: str, now: datetime) -> str:
    return f"{base(dbname)}{REPLACED_TAG}{now.strftime(STAMP)}"


def leftover(dbname: str, tag: str) -> re.Pattern:
    return re.compile(re.escape(base(dbname) + tag) + r"\d{14}$")
