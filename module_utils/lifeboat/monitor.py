"""After every operation: log it, remember it, export it, tell people.

`record(settings, event)` is what backup (and restore, verify) call once per
database: a line in the backup log, the last-attempt state in
`<backup_dir>/.state/<label>-<type>.json` (what `lifeboat status` and the
metrics read), the node_exporter textfile, then notifications. Each step is
independent and never raises: whatever fails comes back as a warning.
"""

from __future__ import annotations

import json
import logging
import os

from . import metrics, notify, storefs, units
from .conninfo import redact
from .errors import UnsafeStore

log = logging.getLogger("lifeboat")

STATE_DIR = ".state"
STATE_SUFFIX = ".json"


def state_dir(backup_dir: str) -> str:
    return os.path.join(os.path.abspath(backup_dir), STATE_DIR)


def state_path(backup_dir: str, label: str, backup_type: str) -> str:
    return os.path.join(state_dir(backup_dir), f"{label}-{backup_type or 'any'}{STATE_SUFFIX}")


def read_states(backup_dir: str) -> dict[tuple[str, str], dict]:
    """Every state file under the store root, by (database, type); unreadable ones skipped."""
    folder = state_dir(backup_dir)
    states = {}
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return states
    for name in names:
        if not name.endswith(STATE_SUFFIX):
            continue
        try:
            state = json.loads(storefs.read(os.path.join(folder, name), "state file"))
            states[(state["database"], state["type"])] = state
        except (OSError, ValueError, KeyError, TypeError, UnsafeStore):
            log.warning("ignoring unreadable state file %s", os.path.join(folder, name))
    return states


def write_json_atomic(path: str, data: dict, mode: int = 0o600) -> None:
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    # never through a planted link; a per-process temp name for concurrent writers
    storefs.write_atomic(
        path, text.encode(), "state file", mode, tmp=f"{path}.{os.getpid()}.tmp",
        owner=storefs.owner_for(os.path.dirname(path)),
    )  # fmt: skip


def update_state(state: dict, event: notify.Event) -> dict:
    """The state after `event` (pure: tests call it directly)."""
    state = dict(state, database=event.database, type=event.type, host=event.host)
    if event.kind == "backup":
        state.update(
            last_attempt_at=event.time,
            last_result=event.outcome,
            last_duration=round(event.duration, 3),
        )
        if event.ok:
            state.update(
                last_success_at=event.time,
                last_success_file=event.file,
                last_success_size=event.size,
                last_success_duration=round(event.duration, 3),
            )
        else:
            state.update(
                last_failure_at=event.time,
                last_error=event.error,
                last_hint=event.hint,
                last_error_type=event.error_type,
            )
    else:
        # verify / restore: room for drills (last verified, RTO) next to the backup state.
        prefix = f"last_{event.kind}"
        if state.get(f"{prefix}_result") != event.outcome:  # when this outcome began
            state[f"{prefix}_since"] = event.time
        state[f"{prefix}_at"] = event.time
        state[f"{prefix}_result"] = event.outcome
        if event.ok:
            state[f"{prefix}_success_at"] = event.time
        for key, value in event.details.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                state[f"{prefix}_{key}"] = value
    return state


def save_state(backup_dir: str, event: notify.Event) -> None:
    path = state_path(backup_dir, event.database, event.type)
    os.makedirs(os.path.dirname(os.path.dirname(path)), mode=0o700, exist_ok=True)
    storefs.ensure_dir(os.path.dirname(path), "state directory")
    try:
        state = json.loads(storefs.read(path, "state file"))
    except (OSError, ValueError):
        state = {}
    write_json_atomic(path, update_state(state, event))


def record(settings, event: notify.Event, text: str | None = None) -> list[str]:
    """Log, remember, export and notify one event; returns warnings, never raises.

    `text` is the log line's summary (default: built from the event).
    """
    secrets = notify.secrets_of(settings)
    event.error = redact(event.error, *secrets)
    event.hint = redact(event.hint, *secrets)
    warnings = []
    text = redact(text, *secrets) if text else summary(event)
    message = f"{event.kind} {'ok' if event.ok else 'failed'}: {text}"
    if event.ok:
        log.info("%s", message, extra={"event": event.as_dict()})
    else:
        log.error("%s", message, extra={"event": event.as_dict()})
    backup_dir = getattr(settings, "backup_dir", None)
    if backup_dir and event.type:
        try:
            save_state(backup_dir, event)
        except UnsafeStore as exc:
            warnings.append(f"{exc} `lifeboat status` and the metrics will not show this run.")
        except OSError as exc:
            warnings.append(
                f"Failed to save the run state under {state_dir(backup_dir)}: "
                f"{exc.strerror or exc}. `lifeboat status` and the metrics will "
                "not show this run."
            )
        if getattr(settings, "metrics_dir", None):
            try:
                metrics.write(settings.metrics_dir, read_states(backup_dir))
            except OSError as exc:
                warnings.append(
                    f"Failed to write metrics to {settings.metrics_dir}: "
                    f"{exc.strerror or exc}. Check lifeboat_metrics_dir exists "
                    "and is writable by the backup user."
                )
    for warning in warnings:
        log.warning("%s", warning)
    # Notify last, so the message also carries the warnings above.
    event.warnings = list(event.warnings) + warnings
    warnings += notify.send(settings, event)
    return warnings


def summary(event: notify.Event) -> str:
    what = " ".join(filter(None, [event.database, event.type]))
    if not event.ok:
        return f"{what}: FAILED: {event.error} {event.hint}".strip()
    size = f"{units.human_size(event.size)}, " if event.size else ""
    where = f"{event.file} " if event.file else ""
    return f"{what}: {where}({size}{event.duration:.1f}s)"


def config_failure(layers, error, kind: str, backup_type: str = "") -> list[str]:
    """Report a run that failed before any database was known (bad or missing settings).

    `layers` is a callable returning the settings layers; the notification
    settings are read from them without the broken part where possible.
    Best effort: when even those cannot be read, stderr and the exit code remain.
    """
    from .status import load  # tolerant of a missing database setting

    try:
        settings, _ = load(*layers())
    except Exception:  # the notification settings themselves are broken
        return []
    event = notify.Event(
        kind=kind,
        database="(configuration)",
        ok=False,
        type=backup_type,
        error=getattr(error, "message", str(error)),
        hint=getattr(error, "hint", ""),
        error_type=type(error).__name__,
    )
    from . import eventlog

    warnings: list[str] = []
    with eventlog.attached(settings, warnings):
        # No run state: there is no database to file it under.
        settings = type(settings)(**{**settings.__dict__, "backup_dir": ""})
        return warnings + record(settings, event)
