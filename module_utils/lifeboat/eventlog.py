"""The backup log: every event of a run, appended to `log_file`, one line each.

The guide's `tail -f /var/log/plotzed-backup.log` view. Lines are text
(`2025-01-15T02:00:04Z host lifeboat INFO backup ok: ...`) or, with
`log_format: json`, one JSON object per line. The file is opened in append
mode per run, so logrotate's `create` (or `copytruncate`) both work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time

from . import storefs
from .errors import ConfigError

log = logging.getLogger("lifeboat")
FORMATS = ("text", "json")
FILE_MODE = 0o640


def check_format(value) -> str:
    value = value or "text"
    if value not in FORMATS:
        raise ConfigError(f"Unknown log_format {value!r}.", "Use text or json.")
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line; an event's fields ride along as `event`."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "host": HOST,
            "level": record.levelname,
            "message": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if event is not None:
            line["event"] = event
        return json.dumps(line, sort_keys=True)


HOST = socket.gethostname()


def text_formatter() -> logging.Formatter:
    formatter = logging.Formatter(
        f"%(asctime)s {HOST} lifeboat %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%SZ"
    )
    formatter.converter = time.gmtime
    return formatter


class _LogFile(logging.FileHandler):
    """Marks handlers we added, so nested runs do not log each line twice."""


def open_handler(path: str, fmt: str) -> logging.Handler:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o750, exist_ok=True)
    # Create with a private mode; FileHandler would use the umask.
    try:  # only a file this call creates is handed over, never one found there
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        pass
    else:
        try:
            owner = storefs.owner_for(folder)
            if owner is not None:  # created by root: the backup user must keep appending
                os.fchown(fd, *owner)
        finally:
            os.close(fd)
    handler = _LogFile(path, mode="a", encoding="utf-8")
    handler.setFormatter(JsonFormatter() if fmt == "json" else text_formatter())
    handler.setLevel(logging.INFO)
    return handler


@contextlib.contextmanager
def attached(settings, warnings: list[str] | None = None):
    """Log to `settings.log_file` while inside; a log that cannot be opened is a warning."""
    path = getattr(settings, "log_file", None)
    if not path:
        yield
        return
    path = os.path.abspath(path)
    if any(isinstance(h, _LogFile) and h.baseFilename == path for h in log.handlers):
        yield  # an outer caller (the CLI) already logs there
        return
    try:
        handler = open_handler(path, getattr(settings, "log_format", "text"))
    except OSError as exc:
        message = (
            f"Failed to open the backup log {path}: {exc.strerror or exc}. "
            "Create its directory writable by the backup user (the provision "
            "playbook does) or change lifeboat_log_file."
        )
        log.warning("%s", message)
        if warnings is not None:
            warnings.append(message)
        yield
        return
    previous, effective = log.level, log.getEffectiveLevel()
    quietened = []
    if effective > logging.INFO:
        # The file gets INFO; the console handlers keep their quieter level.
        for other in log.handlers:
            if other.level < effective:
                quietened.append((other, other.level))
                other.setLevel(effective)
        log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()
        log.setLevel(previous)
        for other, level in quietened:
            other.setLevel(level)
