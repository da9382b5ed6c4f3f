"""Settings: one schema for the CLI, the config file and the Ansible modules.

Precedence, lowest first: defaults, the config file (/etc/lifeboat/lifeboat.yml),
the environment (the guide's variables: DATABASE_URL, BACKUP_S3_BUCKET, ...,
or LIFEBOAT_<KEY>), then explicit values (CLI flags, module parameters).
Keys are the Ansible variable names without the `lifeboat_` prefix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import compress, naming, retention
from .conninfo import ConnInfo
from .errors import ConfigError

DEFAULT_CONFIG = "/etc/lifeboat/lifeboat.yml"
FORMATS = ("plain", "custom", "directory")

DEFAULTS: dict[str, object] = {
    "database_url": None,
    "databases": [],
    "backup_dir": "backups",
    "format": "plain",
    "compression": "gzip",
    "compression_level": None,
    "jobs": 2,
    "threads": 2,
    "retention": {},
    "pg_bin_dir": None,
    "pg_dump_args": [],
}

# The guide's environment variables, then lifeboat's own.
ENVIRONMENT = {
    "DATABASE_URL": "database_url",
    "LIFEBOAT_BACKUP_DIR": "backup_dir",
}

# Values that must never be logged or echoed.
SECRET_KEYS = {"database_url", "databases"}


@dataclass(frozen=True)
class Target:
    """One database to back up: its file-name label and how to reach it."""

    label: str
    conn: ConnInfo = field(repr=False)


@dataclass(frozen=True)
class Settings:
    targets: tuple[Target, ...]
    backup_dir: str
    format: str = "plain"
    compression: str = "gzip"
    compression_level: int | None = None
    jobs: int = 2
    threads: int = 2
    retention: dict = field(default_factory=lambda: dict(retention.DEFAULT_POLICY))
    pg_bin_dir: str | None = None
    pg_dump_args: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict, repr=False)

    def target(self, label: str | None) -> Target:
        if label is None and len(self.targets) == 1:
            return self.targets[0]
        for target in self.targets:
            if target.label == label or target.conn.dbname == label:
                return target
        names = ", ".join(t.label for t in self.targets) or "none"
        raise ConfigError(f"No configured database is called {label!r} (configured: {names}).",
                          "Pass --database NAME with one of them.")


def load_file(path: str | None) -> dict:
    """The config file as a dict; a missing default file is fine, a missing --config is not."""
    explicit = path is not None
    path = path or os.environ.get("LIFEBOAT_CONFIG") or DEFAULT_CONFIG
    if not os.path.exists(path):
        if explicit:
            raise ConfigError(f"Config file {path} does not exist.", "Check the --config path.")
        return {}
    import yaml  # only needed when there is a file

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Failed to read config file {path}: {exc}.",
                          "Fix the YAML (or the file's permissions) and try again.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of settings.",
                          "See docs/configuration.md for an example.")
    return {key.removeprefix("lifeboat_"): value for key, value in data.items()}


def from_environment(environ=None) -> dict:
    environ = os.environ if environ is None else environ
    found = {}
    for var, key in ENVIRONMENT.items():
        if environ.get(var):
            found[key] = environ[var]
    for key in DEFAULTS:
        var = "LIFEBOAT_" + key.upper()
        if environ.get(var):
            found[key] = environ[var]
    return found


def resolve(*layers: dict) -> Settings:
    """Merge layers (lowest precedence first, None values ignored) and validate."""
    merged = dict(DEFAULTS)
    for layer in layers:
        for key, value in (layer or {}).items():
            if key not in DEFAULTS:
                raise ConfigError(f"Unknown setting {key!r}.",
                                  f"Known settings: {', '.join(sorted(DEFAULTS))}.")
            if value is not None and value != "":
                merged[key] = value
    return build(merged)


def _int(merged: dict, key: str, low: int, high: int) -> int | None:
    value = merged[key]
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"Setting {key} must be a whole number, got {value!r}.",
                          f"Use {low} to {high}.") from None
    if not low <= number <= high:
        raise ConfigError(f"Setting {key} is {number}, out of range.", f"Use {low} to {high}.")
    return number


def targets_from(merged: dict) -> tuple[Target, ...]:
    entries = merged["databases"] or ([merged["database_url"]] if merged["database_url"] else [])
    if isinstance(entries, str):
        entries = [part for part in entries.replace(",", " ").split() if part]
    if not entries:
        raise ConfigError("No database is configured.",
                          "Set DATABASE_URL (or lifeboat_database_url / lifeboat_databases).")
    targets = []
    for entry in entries:
        if isinstance(entry, dict):
            conn = ConnInfo.from_url(entry.get("url", ""))
            label = entry.get("name") or conn.dbname
        else:
            conn = ConnInfo.from_url(entry)
            label = conn.dbname
        targets.append(Target(naming.safe_label(label), conn))
    labels = [t.label for t in targets]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"Two configured databases share the name {duplicates[0]!r}.",
                          "Give each a distinct `name:` in lifeboat_databases.")
    return tuple(targets)


def build(merged: dict) -> Settings:
    fmt = merged["format"]
    if fmt not in FORMATS:
        raise ConfigError(f"Unknown format {fmt!r}.", f"Use one of: {', '.join(FORMATS)}.")
    compression = merged["compression"]
    naming.extension(fmt, compression)  # validates the combination
    level = _int(merged, "compression_level", 0, 19)
    if fmt == "plain":
        compress.check(compression, level)
    elif level is not None and level > 9:
        raise ConfigError(f"Compression level {level} is out of range for {fmt} format.",
                          "pg_dump takes 0 to 9.")
    extra = merged["pg_dump_args"] or []
    if isinstance(extra, str) or not all(isinstance(a, str) for a in extra):
        raise ConfigError("pg_dump_args must be a list of strings.",
                          "Example: ['--exclude-table=audit_log'].")
    return Settings(
        targets=targets_from(merged),
        backup_dir=str(merged["backup_dir"]),
        format=fmt,
        compression=compression,
        compression_level=level,
        jobs=_int(merged, "jobs", 1, 64),
        threads=_int(merged, "threads", 1, 64),
        retention=retention.check_policy(merged["retention"]),
        pg_bin_dir=merged["pg_bin_dir"],
        pg_dump_args=tuple(extra),
        raw=merged,
    )
