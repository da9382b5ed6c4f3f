"""Settings: one schema for the CLI, the config file and the Ansible modules.

Precedence, lowest first: defaults, the config file (/etc/lifeboat/lifeboat.yml),
the environment (the guide's variables: DATABASE_URL, BACKUP_S3_BUCKET, ...,
or LIFEBOAT_<KEY>), then explicit values (CLI flags, module parameters).
Keys are the Ansible variable names without the `lifeboat_` prefix.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from . import compress, encrypt, eventlog, naming, notify, retention, schema, status, verify
from .conninfo import ConnInfo
from .errors import ConfigError

DEFAULT_CONFIG = "/etc/lifeboat/lifeboat.yml"
FORMATS = schema.BY_NAME["format"].choices

# Derived from the one declaration of every setting (schema.py).
DEFAULTS: dict[str, object] = schema.defaults()
# The guide's environment variables (LIFEBOAT_<KEY> works for every key).
ENVIRONMENT = {var: s.name for s in schema.SETTINGS for var in s.env}
# Values that must never be logged or echoed.
SECRET_KEYS = set(schema.SECRETS)


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
    lock_timeout: int = 60  # seconds to wait for another session's lock (pglocks.py)
    s3_bucket: str | None = None
    s3_prefix: str = "backups"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_sse: str | None = None
    s3_sse_kms_key_id: str | None = None
    s3_part_size_mb: int = 8
    s3_max_attempts: int = 5
    notify_email: tuple[str, ...] = ()
    notify_on: tuple[str, ...] = ("success", "failure")
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_security: str = "none"
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_sender: str = ""
    slack_webhook_url: str | None = field(default=None, repr=False)
    webhook_url: str | None = field(default=None, repr=False)
    notify_timeout: float = 10.0
    log_file: str | None = None
    log_format: str = "text"
    metrics_dir: str | None = None
    status_max_age_hours: dict = field(default_factory=dict)
    verify_queries: dict = field(default_factory=dict)  # label (or "*") -> tuple of SQL
    drill_server: str | None = field(default=None, repr=False)
    globals: bool = False
    globals_passwords: bool = False
    encrypt_recipients: tuple[str, ...] = ()  # age recipients or recipients files; () = off
    encrypt_identity_file: str | None = None  # path only: the key never leaves the file
    raw: dict = field(default_factory=dict, repr=False)

    def __getattr__(self, name: str):
        # A setting declared in schema.py without a field here: its checked value.
        raw = self.__dict__.get("raw") or {}
        if name in schema.BY_NAME and name in raw:
            return raw[name]
        raise AttributeError(name)

    def target(self, label: str | None) -> Target:
        if label is None and len(self.targets) == 1:
            return self.targets[0]
        for target in self.targets:
            if target.label == label or target.conn.dbname == label:
                return target
        names = ", ".join(t.label for t in self.targets) or "none"
        raise ConfigError(
            f"No configured database is called {label!r} (configured: {names}).",
            "Pass --database NAME with one of them.",
        )


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
        raise ConfigError(
            f"Failed to read config file {path}: {exc}.",
            "Fix the YAML (or the file's permissions) and try again.",
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {path} must hold a mapping of settings.",
            "See docs/configuration.md for an example.",
        )
    settings = {key.removeprefix("lifeboat_"): value for key, value in data.items()}
    secrets_file = settings.pop("secrets_file", None)
    if secrets_file:
        # Relative to the config file's directory; absolute paths stay as they are.
        secrets_file = os.path.join(os.path.dirname(os.path.abspath(path)), str(secrets_file))
        settings.update(load_secrets(secrets_file))
    return checked(settings, path)


def checked(layer: dict, source: str) -> dict:
    """A layer's known settings converted and checked; errors name `source` and the key."""
    return {
        key: schema.check(schema.BY_NAME[key], value, f"{key} in {source}")
        if key in schema.BY_NAME and value not in (None, "")
        else value
        for key, value in layer.items()
    }


def load_secrets(path: str) -> dict:
    """The file named by `secrets_file:` in the config: database URLs and passwords.

    Kept apart from the readable config (the lifeboat role writes it 0600, owned
    by the backup user). Its settings win over the config file's. Like ssh with
    its keys, only a file private to its owner is read: it holds passwords and
    may set pg_bin_dir, which decides which programs run.
    """
    import yaml

    try:
        # Checked through the open file: what is read is what was checked.
        fh = open(path)  # noqa: SIM115 - closed by the `with fh` below
    except FileNotFoundError:
        raise ConfigError(
            f"Secrets file {path} (secrets_file in the config) does not exist.",
            "Create it with mode 0600, owned by the backup user, or remove secrets_file.",
        ) from None
    except PermissionError:
        raise ConfigError(
            f"Failed to read secrets file {path}: permission denied.",
            "Run lifeboat as the backup user that owns it (or as root).",
        ) from None
    with fh:
        check_private(path, os.fstat(fh.fileno()))
        try:
            data = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as exc:
            # The YAML error quotes the offending line: keep it out of logs.
            raise ConfigError(
                f"Failed to read secrets file {path}: {type(exc).__name__}.",
                "Fix its YAML (a mapping of settings, as in lifeboat.yml).",
            ) from None
    if not isinstance(data, dict) or "secrets_file" in data:
        raise ConfigError(
            f"Secrets file {path} must hold a mapping of settings (and no secrets_file).",
            "Example: `database_url: postgresql://user:password@host:5432/dbname`.",
        )
    return {key.removeprefix("lifeboat_"): value for key, value in data.items()}


def check_private(path: str, info: os.stat_result) -> None:
    """Refuse a secrets file others may read or write, or that another user owns."""
    import pwd

    me = os.geteuid()
    try:
        user = pwd.getpwuid(me).pw_name
    except KeyError:
        user = str(me)
    if info.st_uid not in (me, 0):
        raise ConfigError(
            f"Secrets file {path} is owned by uid {info.st_uid}, not by {user} (who runs "
            "lifeboat) or root: whoever owns it decides which programs lifeboat runs.",
            f"Run `chown {user} {path}` (or run lifeboat as its owner).",
        )
    if info.st_mode & 0o077:
        raise ConfigError(
            f"Secrets file {path} is accessible to other users (mode "
            f"{info.st_mode & 0o777:04o}); only its owner may read or write it.",
            f"Run `chmod 600 {path}`.",
        )


def from_environment(environ=None) -> dict:
    """Settings from the environment, parsed (YAML/JSON for structured ones) and checked."""
    return schema.from_environment(os.environ if environ is None else environ)


def resolve(*layers: dict) -> Settings:
    """Merge layers (lowest precedence first, None values ignored) and validate."""
    merged = schema.defaults()
    for layer in layers:
        for key, value in (layer or {}).items():
            if key not in schema.BY_NAME:
                raise ConfigError(
                    f"Unknown setting {key!r}.", f"Known settings: {', '.join(sorted(DEFAULTS))}."
                )
            if value is not None and value != "":
                merged[key] = schema.check(schema.BY_NAME[key], value)
    return build(merged)


def _int(merged: dict, key: str, low: int, high: int) -> int | None:
    value = merged[key]
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"Setting {key} must be a whole number, got {value!r}.", f"Use {low} to {high}."
        ) from None
    if not low <= number <= high:
        raise ConfigError(f"Setting {key} is {number}, out of range.", f"Use {low} to {high}.")
    return number


def targets_from(merged: dict) -> tuple[Target, ...]:
    """The databases to back up: connection strings libpq reads (conninfo.py)."""
    entries = merged["databases"] or ([merged["database_url"]] if merged["database_url"] else [])
    if isinstance(entries, str):
        entries = split_databases(entries)
    if not entries:
        if os.environ.get("PGDATABASE") or os.environ.get("PGSERVICE"):
            # libpq's own defaults name the database: back up that one.
            conn = ConnInfo.from_environment()
            return (Target(naming.safe_label(conn.dbname), conn),)
        raise ConfigError(
            "No database is configured.",
            "Set DATABASE_URL (or lifeboat_database_url / lifeboat_databases: connection "
            "strings or plain database names), or PGDATABASE.",
        )
    targets = []
    for entry in entries:
        if isinstance(entry, dict):
            # {name} alone is a database reached with libpq's defaults (peer authentication).
            conn = ConnInfo.parse(entry.get("url") or entry.get("name"))
            label = entry.get("name") or conn.dbname
        else:
            conn = ConnInfo.parse(entry)
            label = conn.dbname
        targets.append(Target(naming.safe_label(label), conn))
    labels = [t.label for t in targets]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(
            f"Two configured databases share the name {duplicates[0]!r}.",
            "Give each a distinct `name:` in lifeboat_databases.",
        )
    return tuple(targets)


def split_databases(text: str) -> list[str]:
    """`databases` given as one string: a single key/value connection string (its spaces
    belong to it), else names and URLs separated by spaces or commas (a URL keeps its
    commas: they separate its hosts)."""
    text = text.strip()
    if re.match(r"[A-Za-z_]+\s*=", text):
        return [text]
    parts = []
    for word in text.split():
        parts += [word] if "://" in word else [part for part in word.split(",") if part]
    return parts


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
        raise ConfigError(
            f"Compression level {level} is out of range for {fmt} format.", "pg_dump takes 0 to 9."
        )
    extra = merged["pg_dump_args"] or []
    if isinstance(extra, str) or not all(isinstance(a, str) for a in extra):
        raise ConfigError(
            "pg_dump_args must be a list of strings.", "Example: ['--exclude-table=audit_log']."
        )
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
        lock_timeout=_int(merged, "lock_timeout", 1, 86400),
        **s3_settings(merged),
        **monitoring_settings(merged),
        **verify.check_config(merged),
        **encrypt.check_config(merged, fmt),
        raw=merged,
    )


def s3_settings(merged: dict) -> dict:
    """The S3 settings, checked; none of them is a secret."""
    bucket = merged["s3_bucket"] or None
    sse = merged["s3_sse"] or None
    if sse not in (None, "AES256", "aws:kms"):
        raise ConfigError(f"Unknown s3_sse {sse!r}.", "Use AES256 or aws:kms (or leave it empty).")
    if merged["s3_sse_kms_key_id"] and sse != "aws:kms":
        raise ConfigError(
            "s3_sse_kms_key_id is set but s3_sse is not aws:kms.",
            "Set lifeboat_s3_sse: aws:kms, or drop the key id.",
        )
    return {
        "s3_bucket": bucket,
        "s3_prefix": str(merged["s3_prefix"] or "").strip("/"),
        "s3_endpoint_url": merged["s3_endpoint_url"] or None,
        "s3_region": merged["s3_region"] or None,
        "s3_sse": sse,
        "s3_sse_kms_key_id": merged["s3_sse_kms_key_id"] or None,
        "s3_part_size_mb": _int(merged, "s3_part_size_mb", 5, 5120),
        "s3_max_attempts": _int(merged, "s3_max_attempts", 1, 20),
    }


def monitoring_settings(merged: dict) -> dict:
    """Notifications, backup log, metrics and status thresholds, checked."""
    return {
        **notify.check_config(merged),
        "log_file": merged["log_file"] or None,
        "log_format": eventlog.check_format(merged["log_format"]),
        "metrics_dir": merged["metrics_dir"] or None,
        "status_max_age_hours": status.check_max_age(merged["status_max_age_hours"]),
    }
