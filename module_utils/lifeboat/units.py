"""How sizes and moments are written for people: summaries, tables, messages."""

from __future__ import annotations

from datetime import datetime, timezone


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def iso(moment: datetime | None) -> str:
    """UTC, seconds, with a Z: 2025-01-15T02:00:00Z ('' for None)."""
    if moment is None:
        return ""
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
