"""Prometheus metrics through node_exporter's textfile collector.

`write(metrics_dir, states)` renders every database and type known to the
run state (so one database's run keeps the others' series) into
`<metrics_dir>/lifeboat.prom`, written to a temporary name and renamed:
the collector never reads half a file.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime

FILE_NAME = "lifeboat.prom"

# name -> (help, state key, kind of value)
SERIES = (
    (
        "lifeboat_backup_last_attempt_timestamp_seconds",
        "Unix time of the last backup attempt.",
        "last_attempt_at",
        "time",
    ),
    (
        "lifeboat_backup_last_success_timestamp_seconds",
        "Unix time of the last successful backup.",
        "last_success_at",
        "time",
    ),
    (
        "lifeboat_backup_last_failure_timestamp_seconds",
        "Unix time of the last failed backup.",
        "last_failure_at",
        "time",
    ),
    (
        "lifeboat_backup_last_ok",
        "1 when the last backup attempt succeeded, 0 when it failed.",
        "last_result",
        "result",
    ),
    (
        "lifeboat_backup_last_size_bytes",
        "Size of the last successful backup file.",
        "last_success_size",
        "number",
    ),
    (
        "lifeboat_backup_last_duration_seconds",
        "Duration of the last backup attempt.",
        "last_duration",
        "number",
    ),
    (
        "lifeboat_verify_last_success_timestamp_seconds",
        "Unix time of the last successful verification or restore drill.",
        "last_verify_success_at",
        "time",
    ),
    (
        "lifeboat_verify_last_ok",
        "1 when the last verification succeeded, 0 when it failed.",
        "last_verify_result",
        "result",
    ),
    (
        "lifeboat_restore_last_success_timestamp_seconds",
        "Unix time of the last successful restore.",
        "last_restore_success_at",
        "time",
    ),
    (
        "lifeboat_restore_last_ok",
        "1 when the last restore succeeded, 0 when it failed.",
        "last_restore_result",
        "result",
    ),
    (
        "lifeboat_restore_last_rto_seconds",
        "Recovery time of the last restore or restore drill.",
        "last_restore_rto_seconds",
        "number",
    ),
    # Restore drills (drill.py): what was last proven restorable, and how fast.
    (
        "lifeboat_verify_last_rto_seconds",
        "Measured restore time (RTO) of the last successful restore drill.",
        "last_verify_rto_seconds",
        "number",
    ),
    (
        "lifeboat_verify_last_backup_timestamp_seconds",
        "Unix time the last verified backup was taken (its age: time() minus this).",
        "last_verify_backup_timestamp",
        "number",
    ),
    (
        "lifeboat_verify_last_backup_age_seconds",
        "Age of the last verified backup when it was verified.",
        "last_verify_backup_age_seconds",
        "number",
    ),
)


def timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(state: dict, key: str, kind: str) -> float | None:
    value = state.get(key)
    if value in (None, ""):
        return None
    try:
        if kind == "time":
            return timestamp(value)
        if kind == "result":
            return 1.0 if value == "success" else 0.0
        return float(value)
    except (TypeError, ValueError):
        return None


def render(states: dict[tuple[str, str], dict]) -> str:
    """The textfile body: HELP/TYPE once per metric, one sample per database and type."""
    lines = []
    for name, help_text, key, kind in SERIES:
        samples = []
        for (database, backup_type), state in sorted(states.items()):
            value = _value(state, key, kind)
            if value is not None:
                labels = f'database="{_label(database)}",type="{_label(backup_type)}"'
                samples.append(f"{name}{{{labels}}} {value:.17g}")
        if samples:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples]
    return "\n".join(lines) + "\n" if lines else ""


def write(metrics_dir: str, states: dict[tuple[str, str], dict]) -> str:
    """Write `<metrics_dir>/lifeboat.prom` atomically; returns its path."""
    return write_file(metrics_dir, FILE_NAME, render(states))


def write_file(metrics_dir: str, file_name: str, body: str) -> str:
    """Write one textfile atomically (also lifeboat_pitr.prom, pitr/report.py)."""
    os.makedirs(metrics_dir, mode=0o755, exist_ok=True)
    path = os.path.join(metrics_dir, file_name)
    # The collector reads *.prom only: the temporary name must not end so.
    tmp = os.path.join(metrics_dir, f".{file_name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # node_exporter runs as its own user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
