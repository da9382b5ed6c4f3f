"""Settings: one schema for the CLI, the config file and the Ansible modules.

Precedence, lowest first: defaults, the config file (/etc/lifeboat/lifeboat.yml),
the environment (the guide's variables: DATABASE_URL, BACKUP_S3_BUCKET, ...,
or LIFEBOAT_<KEY>), then explicit values (CLI flags, module parameters).
Keys are the Ansible variable names without the `lifeboat_` prefix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import compress, encrypt, eventlog, naming, notify, retention, status, verify
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
    # Off-site copies (s3.py); credentials come from the AWS chain, never from here.
    "s3_bucket": None,
    "s3_prefix": "backups",
    "s3_endpoint_url": None,
    "s3_region": None,
    "s3_sse": None,
    "s3_sse_kms_key_id": None,
    "s3_part_size_mb": 8,
    "s3_max_attempts": 5,
    # Monitoring (notify.py, eventlog.py, metrics.py, status.py).
    "notify_email": None,
    "notify_on": ["success", "failure"],
    "smtp_host": "localhost",
    "smtp_port": None,
    "smtp_security": "none",
    "smtp_user": None,
    "smtp_password": None,
    "smtp_sender": None,
    "slack_webhook_url": None,
    "webhook_url": None,
    "notify_timeout": 10,
    "log_file": None,
    "log_format": "text",
    "metrics_dir": None,
    "status_max_age_hours": {},
    # Restore drills and cluster globals (verify.py, drill.py, cluster_globals.py).
    "verify_queries": [],
    "drill_server": None,
    "globals": False,
    "globals_passwords": False,
    # Client-side encryption with age (encrypt.py): public recipients; the identity's path.
    "encrypt_recipients": [],
    "encrypt_identity_file": None,
}

# The guide's environment variables, then lifeboat's own.
ENVIRONMENT = {
    "DATABASE_URL": "database_url",
    "LIFEBOAT_BACKUP_DIR": "backup_dir",
    "BACKUP_S3_BUCKET": "s3_bucket",
    "AWS_ENDPOINT_URL": "s3_endpoint_url",
    "BACKUP_NOTIFICATION_EMAIL": "notify_email",
    "SLACK_WEBHOOK_URL": "slack_webhook_url",
}

# Values that must never be logged or echoed.
SECRET_KEYS = {
    "database_url",
    "databases",
    "smtp_password",
    "slack_webhook_url",
    "webhook_url",
    "drill_server",
}


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
    return settings


def load_secrets(path: str) -> dict:
    """The file named by `secrets_file:` in the config: database URLs and passwords.

    Kept apart from the readable config (the lifeboat role writes it 0600, owned
    by the backup user). Its settings win over the config file's. It must exist
    and must not be accessible to other users.
    """
    import yaml

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(
            f"Secrets file {path} (secrets_file in the config) does not exist.",
            "Create it with mode 0600, owned by the backup user, or remove secrets_file.",
        ) from None
    if mode & 0o007:
        raise ConfigError(
            f"Secrets file {path} is accessible to other users (mode {mode & 0o777:04o}).",
            f"Run `chmod 600 {path}` (owner: the backup user).",
        )
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh) or {}
    except PermissionError:
        raise ConfigError(
            f"Failed to read secrets file {path}: permission denied.",
            "Run lifeboat as the backup user that owns it (or as root).",
        ) from None
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
                raise ConfigError(
                    f"Unknown setting {key!r}.", f"Known settings: {', '.join(sorted(DEFAULTS))}."
                )
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
        raise ConfigError(
            f"Setting {key} must be a whole number, got {value!r}.", f"Use {low} to {high}."
        ) from None
    if not low <= number <= high:
        raise ConfigError(f"Setting {key} is {number}, out of range.", f"Use {low} to {high}.")
    return number


def targets_from(merged: dict) -> tuple[Target, ...]:
    entries = merged["databases"] or ([merged["database_url"]] if merged["database_url"] else [])
    if isinstance(entries, str):
        entries = [part for part in entries.replace(",", " ").split() if part]
    if not entries:
        raise ConfigError(
            "No database is configured.",
            "Set DATABASE_URL (or lifeboat_database_url / lifeboat_databases).",
        )
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
        raise ConfigError(
            f"Two configured databases share the name {duplicates[0]!r}.",
            "Give each a distinct `name:` in lifeboat_databases.",
        )
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
        **s3_settings(merged, fmt),
        **monitoring_settings(merged),
        **verify.check_config(merged),
        **encrypt.check_config(merged, fmt),
        raw=merged,
    )


def s3_settings(merged: dict, fmt: str) -> dict:
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
    if bucket and fmt == "directory":
        raise ConfigError(
            "The directory format cannot be streamed to S3.",
            "Use format custom (pg_restore -j restores it in parallel too) or plain, "
            "or unset lifeboat_s3_bucket / BACKUP_S3_BUCKET.",
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
