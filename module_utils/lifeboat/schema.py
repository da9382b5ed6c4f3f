"""Every lifeboat setting, declared once (as ansible-core's config/base.yml does).

Everything else is derived from SETTINGS: the engine's defaults and type
checks (settings.py), the environment layer (`LIFEBOAT_<KEY>` for every key,
plus the guide's variables), the Ansible modules' argument specs
(ansible_args.py), and - written by tools/gen_settings.py, checked by
tests/unit/test_schema.py - the lifeboat role's defaults, argument specs and
config/secrets split, and the table in docs/configuration.md.

Adding a setting is one line in SETTINGS (then `python tools/gen_settings.py`).
Checks that involve several settings stay in the module that owns them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError

TYPES = ("str", "path", "int", "float", "bool", "list", "dict", "raw")
_UNSET = object()


@dataclass(frozen=True)
class Setting:
    name: str
    type: str  # Ansible's type names (TYPES)
    default: object = None
    doc: str = ""  # one line, shown in the role's files, the docs table and errors
    group: str = ""  # which modules take it (ansible_args.py)
    elements: str | None = None  # list element type
    choices: tuple = ()
    secret: bool = False  # never logged; lives in the secrets file; no_log in modules
    env: tuple[str, ...] = ()  # the guide's variables; LIFEBOAT_<NAME> always works too
    low: float | None = None  # numeric range, inclusive
    high: float | None = None
    options: tuple[Setting, ...] = ()  # the keys of a dict setting
    split: bool = False  # a list may be given as one comma/space-separated string
    role_default: object = _UNSET  # the lifeboat role's default, when not the engine's
    module: dict = field(default_factory=dict)  # overrides for the module argument spec

    @property
    def env_vars(self) -> tuple[str, ...]:
        """Environment variables, lowest precedence first."""
        return (*self.env, "LIFEBOAT_" + self.name.upper().replace("-", "_"))


S = Setting
# Keys of the structured settings (their own one-line declarations).
RETENTION = (
    S("daily", "int", 7, "Days of daily backups to keep.", low=1),
    S("weekly", "int", 4, "Weeks of weekly backups to keep.", low=1),
    S("monthly", "int", 12, "Months of monthly backups to keep.", low=1),
    S("pre-restore", "int", 5, "Number of pre-restore backups to keep.", low=1),
)
MAX_AGE = (
    S("daily", "float", 26, "Hours.", low=0),
    S("weekly", "float", 192, "Hours.", low=0),
    S("monthly", "float", 768, "Hours.", low=0),
)

# fmt: off
SETTINGS: tuple[Setting, ...] = (
    S("database_url", "str", None, "The database in any libpq form: postgresql://user:pw@host:5432/db, host=... dbname=..., service=NAME, a name", "connection", secret=True, env=("DATABASE_URL",)),
    S("databases", "list", [], "Several databases: connection strings, names (local socket), or {url, name}; wins over database_url", "connection", elements="raw", secret=True, split=True),
    S("backup_dir", "path", "backups", "Root of the local store (created 0700): DIR/TYPE/DB-TYPE-backup-TIME.sql.gz", "connection", role_default="/var/backups/lifeboat", module={"default": None}),
    S("pg_bin_dir", "path", None, "Directory holding pg_dump, psql and pg_restore; empty: the newest installed major", "connection"),
    S("format", "str", "plain", "pg_dump format: plain (SQL), custom (pg_restore -j) or directory (pg_dump -j; one .dir.tar with S3 or age)", "dump", choices=("plain", "custom", "directory")),
    S("compression", "str", "gzip", "gzip (zlib-ng, threaded), zstd or none", "dump", choices=("gzip", "zstd", "none")),
    S("compression_level", "int", None, "gzip 1-9 (default: chosen per backup from its first 4 MiB), zstd 1-19 (default 3); custom/directory: pg_dump's 0-9", "dump", low=0, high=19),
    S("jobs", "int", 2, "pg_restore --jobs for custom/directory restores; pg_dump --jobs for the directory format", "dump", low=1, high=64),
    S("plain_jobs", "int", 2, "Connections a plain-dump restore loads with: 2 or more split COPY and index builds over them; 1 is one stock psql", "dump", low=1, high=64),
    S("threads", "int", 2, "Compression threads for the plain format", "dump", low=1, high=64),
    S("pg_dump_args", "list", [], "Extra pg_dump arguments, a list (never a shell string), e.g. ['--exclude-table=audit_log']", "dump", elements="str"),
    S("retention", "dict", {}, "Retention per type: daily days, weekly weeks, monthly months, pre-restore count", "dump", options=RETENTION),
    S("lock_timeout", "int", 60, "Seconds a dump, restore or swap waits for a lock another session holds, then fails naming that session", "dump", low=1, high=86400),
    S("s3_bucket", "str", None, "Also copy every backup to s3://BUCKET/PREFIX/TYPE/NAME; empty: no off-site copy", "s3", env=("BACKUP_S3_BUCKET",)),
    S("s3_prefix", "str", "backups", "Key prefix in the bucket; give each host its own when several share a bucket", "s3"),
    S("s3_endpoint_url", "str", None, "S3-compatible endpoint (MinIO, Ceph, R2, ...); empty: AWS", "s3", env=("AWS_ENDPOINT_URL",)),
    S("s3_region", "str", None, "Bucket region; empty: from the AWS chain (AWS_REGION, profile)", "s3"),
    S("s3_sse", "str", None, "Server-side encryption of the uploaded objects: AES256 or aws:kms; empty: the bucket's default", "s3", choices=("AES256", "aws:kms")),
    S("s3_sse_kms_key_id", "str", None, "KMS key id or ARN for aws:kms; empty: the AWS-managed key", "s3"),
    S("s3_part_size_mb", "int", 8, "First multipart part size in MiB (5-5120); parts double every 1,000 parts", "s3", low=5, high=5120),
    S("s3_max_attempts", "int", 5, "Attempts per S3 request (adaptive retries with backoff)", "s3", low=1, high=20),
    S("encrypt_recipients", "list", [], "age recipients (age1...) or recipients files: plain and directory backups are then encrypted with age (.sql.gz.age, .dir.tar.age)", "encrypt", elements="str", split=True),
    S("encrypt_identity_file", "path", None, "Path of the age identity file that decrypts encrypted backups (restore, verify, drills); keep it 0600", "encrypt"),
    S("manifest_key_file", "path", None, "Manifest key file (HMAC-SHA256, one key per line, the last signs), 0600, not in the store; empty: /etc/lifeboat/manifest.key", "encrypt"),
    S("allow_unsigned", "bool", False, "Accept backups whose manifest has no MAC although a manifest key is configured (older backups)", "encrypt"),
    S("notify_email", "list", [], "Email addresses told about every backup, restore and verification", "monitoring", elements="str", split=True, env=("BACKUP_NOTIFICATION_EMAIL",)),
    S("notify_on", "list", ["success", "failure"], "Outcomes that notify; [failure] for failures only", "monitoring", elements="str", choices=("success", "failure"), split=True),
    S("smtp_host", "str", "localhost", "SMTP relay for notify_email", "monitoring"),
    S("smtp_port", "int", None, "SMTP port; empty or 0: 25, 587 with starttls, 465 with tls", "monitoring", low=0, high=65535, role_default=0),
    S("smtp_security", "str", "none", "SMTP transport security: none, starttls or tls (implicit TLS)", "monitoring", choices=("none", "starttls", "tls")),
    S("smtp_user", "str", None, "SMTP login; refused over security none unless the relay is on loopback", "monitoring"),
    S("smtp_password", "str", None, "SMTP password", "monitoring", secret=True),
    S("smtp_sender", "str", None, "From address; empty: lifeboat@HOSTNAME", "monitoring"),
    S("slack_webhook_url", "str", None, "Slack incoming webhook URL", "monitoring", secret=True, env=("SLACK_WEBHOOK_URL",)),
    S("webhook_url", "str", None, "Generic webhook that receives every event as JSON (POST)", "monitoring", secret=True),
    S("notify_timeout", "float", 10, "Seconds to wait for each notification channel", "monitoring", low=0.1, high=600),
    S("log_file", "path", None, "Backup log, one line per event; empty: none (/var/log/lifeboat/lifeboat.log on provisioned hosts)", "monitoring"),
    S("log_format", "str", "text", "Backup log lines: text or json", "monitoring", choices=("text", "json")),
    S("metrics_dir", "path", None, "node_exporter textfile collector directory for lifeboat.prom; empty: none", "monitoring"),
    S("status_max_age_hours", "dict", {}, "Hours after which a type's newest backup is STALE; 0 stops checking a type", "status", options=MAX_AGE),
    S("verify_queries", "raw", [], "SQL that must return true in a restore drill's copy: a list, or {database: [sql, ...]}", "verify"),
    S("drill_server", "str", None, "Another server for restore drills (any libpq connection string); empty: the database's own", "verify", secret=True),
    S("globals", "bool", False, "Also save pg_dumpall --globals-only beside each backup (NAME.globals.sql, 0600)", "globals"),
    S("globals_passwords", "bool", False, "Include role password hashes in the globals file (needs a superuser)", "globals"),
    S("pitr", "bool", False, "Point-in-time recovery with pgBackRest: continuous WAL archiving and base backups (docs/pitr.md)", "pitr"),
    S("pitr_stanza", "str", "main", "pgBackRest stanza of this host's cluster", "pitr"),
    S("pitr_config", "path", "/etc/pgbackrest/pgbackrest.conf", "pgBackRest configuration file (written by the lifeboat_pitr role)", "pitr"),
    S("pitr_pg_data", "path", "/var/lib/postgresql/15/main", "Data directory of the cluster whose WAL is archived (pg1-path)", "pitr"),
    S("pitr_pg_port", "int", 5432, "Port of that cluster (pg1-port)", "pitr", low=1, high=65535),
    S("pitr_pg_socket_dir", "path", "/var/run/postgresql", "Unix socket directory of that cluster (pg1-socket-path)", "pitr"),
    S("pitr_repo_path", "path", "/var/lib/pgbackrest", "Repository directory on local disk (repo1-path); with pitr_s3_bucket, the path inside the bucket", "pitr"),
    S("pitr_s3_bucket", "str", None, "Keep the pgBackRest repository in this S3 bucket (repo1-type=s3); empty: local disk", "pitr"),
    S("pitr_s3_endpoint", "str", None, "S3 endpoint host[:port] for the repository (HTTPS); empty: s3.<region>.amazonaws.com", "pitr"),
    S("pitr_s3_region", "str", "us-east-1", "Region of the repository bucket", "pitr"),
    S("pitr_s3_uri_style", "str", "host", "host (virtual-hosted) or path style S3 URLs (path for MinIO and most S3-compatible stores)", "pitr", choices=("host", "path")),
    S("pitr_s3_verify_tls", "bool", True, "Verify the S3 endpoint's TLS certificate", "pitr"),
    S("pitr_s3_ca_file", "path", None, "CA certificate file (PEM) that signed the S3 endpoint's certificate (repo1-storage-ca-file); empty: the system's CAs", "pitr"),
    S("pitr_s3_key", "str", None, "Access key id for the repository bucket; empty: the EC2 instance role's (repo1-s3-key-type=auto)", "pitr", secret=True),
    S("pitr_s3_key_secret", "str", None, "Secret access key for the repository bucket", "pitr", secret=True),
    S("pitr_retention_full", "int", 4, "Full base backups kept (weekly: 4 weeks); their WAL goes with them", "pitr", low=1, high=9999999),
    S("pitr_retention_diff", "int", 7, "Differential base backups kept (daily: a week)", "pitr", low=1, high=9999999),
    S("pitr_archive_timeout", "int", 60, "Seconds after which a WAL segment is archived even if not full: the most a quiet server loses", "pitr", low=1, high=86400),
    S("pitr_log_path", "path", "/var/log/pgbackrest", "pgBackRest log directory", "pitr"),
    S("pitr_lock_path", "path", "/tmp/pgbackrest", "pgBackRest lock directory (pgBackRest's own default)", "pitr"),  # noqa: S108
    S("pitr_os_user", "str", "postgres", "Operating system user that owns the cluster: pgBackRest's archiving and base backups run as it", "pitr"),
    S("pitr_work_dir", "path", "/var/lib/postgresql/lifeboat-pitr", "Where a point-in-time restore puts its temporary instance, which runs as this directory's owner (the backup user; removed afterwards)", "pitr"),
    S("pitr_max_wal_age_minutes", "float", 10, "Minutes without an archived WAL segment (while the server writes) after which status is FAILED", "pitr", low=1),
    S("pitr_recovery_timeout", "int", 3600, "Seconds a point-in-time restore waits for the temporary instance to reach the target time", "pitr", low=10, high=604800),
)
# fmt: on
BY_NAME = {s.name: s for s in SETTINGS}
SECRETS = frozenset(s.name for s in SETTINGS if s.secret)


def defaults() -> dict:
    """The engine's defaults (fresh copies: callers may change them)."""
    return {s.name: _copy(s.default) for s in SETTINGS}


def _copy(value):
    return type(value)(value) if isinstance(value, (list, dict)) else value


# -- checking one value --------------------------------------------------------------------

_TRUE = ("1", "true", "yes", "on", "y", "t")
_FALSE = ("0", "false", "no", "off", "n", "f")


def check(setting: Setting, value, source: str | None = None):
    """`value` converted to the setting's type and checked; ConfigError naming `source`.

    Converts as Ansible's argument spec does ("4" is 4, "yes" is true). A secret's
    value never appears in the message. None means unset and is returned as is.
    """
    if value is None:
        return None
    source = source or f"setting {setting.name}"
    kind = setting.type

    def fail(expected: str, hint: str = ""):
        shown = "" if setting.secret else f", got {_short(value)}"
        raise ConfigError(
            f"Failed to read {source}: expected {expected}{shown}.",
            hint or f"{setting.name}: {setting.doc}.",
        )

    if kind in ("str", "path"):
        if isinstance(value, (dict, list, tuple, bool)):
            fail("a string")
        value = str(value)
        if setting.choices and value not in setting.choices:
            fail(f"one of {', '.join(setting.choices)}")
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        fail("true or false")
    if kind in ("int", "float"):
        number = _number(value, kind)
        if number is None:
            fail("a whole number" if kind == "int" else "a number", _range_hint(setting))
        if (setting.low is not None and number < setting.low) or (
            setting.high is not None and number > setting.high
        ):
            fail(_range_text(setting), _range_hint(setting))
        return number
    if kind == "list":
        if isinstance(value, str) and setting.split:
            items = [part for part in value.replace(",", " ").split() if part]
            _check_items(setting, items, fail)
            return value  # the owner splits it (e.g. URLs vs key=value connection strings)
        if not isinstance(value, (list, tuple)):
            fail("a list", f"Example: {_example(setting)}.")
        return _check_items(setting, list(value), fail)
    if kind == "dict":
        if not isinstance(value, dict):
            fail("a mapping", f"Example: {_example(setting)}.")
        if setting.options:
            known = {o.name: o for o in setting.options}
            checked = {}
            for key, item in value.items():
                if key not in known:
                    raise ConfigError(
                        f"Failed to read {source}: unknown key {key!r}.",
                        f"Use {', '.join(known)}.",
                    )
                checked[key] = check(known[key], item, f"{source} ({key})")
            return checked
        return value
    return value  # raw


def _check_items(setting: Setting, items: list, fail) -> list:
    if setting.elements in ("str", "path"):
        if not all(isinstance(i, (str, int, float)) and not isinstance(i, bool) for i in items):
            fail("a list of strings", f"Example: {_example(setting)}.")
        items = [str(i) for i in items]
    if setting.choices:
        unknown = [i for i in items if i not in setting.choices]
        if unknown:
            fail(f"items among {', '.join(setting.choices)}")
    return items


def _number(value, kind: str):
    if isinstance(value, bool):
        return None
    try:
        number = float(value) if kind == "float" else value
        if kind == "int":
            if isinstance(value, float) and value.is_integer():
                number = int(value)
            elif not isinstance(value, int):
                number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number


def _range_text(setting: Setting) -> str:
    if setting.low is not None and setting.high is not None:
        return f"{setting.low:g} to {setting.high:g}"
    if setting.low is not None:
        return f"at least {setting.low:g}"
    return f"at most {setting.high:g}"


def _range_hint(setting: Setting) -> str:
    if setting.low is not None and setting.high is not None:
        return f"Use {setting.low:g} to {setting.high:g}."
    if setting.low is not None:
        return f"Use {setting.low:g} or more."
    return f"{setting.name}: {setting.doc}."


def _example(setting: Setting) -> str:
    import json

    if setting.options:
        return json.dumps({o.name: o.default for o in setting.options})
    if setting.name == "pg_dump_args":
        return '["--exclude-table=audit_log"]'
    return json.dumps(setting.default) if setting.default not in (None, []) else '["..."]'


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- the environment -----------------------------------------------------------------------


def from_env_text(setting: Setting, text: str, var: str):
    """A value from an environment variable; structured ones are YAML (so JSON too)."""
    if setting.type in ("list", "dict", "raw"):
        stripped = text.strip()
        # JSON, YAML flow or block style; a one-line plain string stays text where it
        # can be one (a comma-separated list, one SQL query that may contain ": ").
        structured = stripped.startswith(("[", "{", "- ")) or "\n" in stripped
        if structured or setting.type == "dict" or (setting.type == "list" and not setting.split):
            import yaml

            try:
                parsed = yaml.safe_load(stripped)
            except yaml.YAMLError as exc:
                cause = "" if setting.secret else f" ({str(exc).splitlines()[0]})"
                raise ConfigError(
                    f"Failed to read {var}: not valid YAML or JSON{cause}.",
                    f"Example: {var}='{_example(setting)}'.",
                ) from None
            return check(setting, parsed, var)
    return check(setting, text, var)


def from_environment(environ) -> dict:
    """Every setting set in `environ`, parsed and checked (errors name the variable)."""
    found = {}
    for setting in SETTINGS:
        for var in setting.env_vars:  # LIFEBOAT_<KEY> wins over the guide's name
            if environ.get(var):
                found[setting.name] = from_env_text(setting, environ[var], var)
    return found


# -- adapters ------------------------------------------------------------------------------


def argument_spec(*groups: str) -> dict:
    """Ansible argument spec entries for the settings of `groups` (or names)."""
    spec = {}
    for setting in SETTINGS:
        if setting.group in groups or setting.name in groups:
            spec[setting.name] = module_option(setting)
    return spec


def module_option(setting: Setting) -> dict:
    option: dict = {"type": setting.type}
    if setting.elements:
        option["elements"] = setting.elements
    if setting.choices:
        option["choices"] = list(setting.choices)
    if setting.default is not None:
        option["default"] = _copy(setting.default)
    if setting.secret:
        option["no_log"] = True
    option.update(setting.module)
    return {key: value for key, value in option.items() if value is not None}


def role_default(setting: Setting):
    """The lifeboat role's default: the engine's, "" for unset strings, or an override."""
    if setting.role_default is not _UNSET:
        return setting.role_default
    if setting.options:
        return {o.name: o.default for o in setting.options}
    if setting.default is None and setting.type in ("str", "path"):
        return ""
    return setting.default
