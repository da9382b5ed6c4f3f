"""Argument specs and result reporting shared by the Ansible modules (no Ansible import).

Every secret is `no_log`. The keys are the settings' keys, so a module hands
its parameters to `settings.resolve` unchanged.
"""

from __future__ import annotations

from . import compress, eventlog, naming, notify, settings

CONNECTION = {
    "database_url": {"type": "str", "no_log": True},
    "databases": {"type": "list", "elements": "raw", "no_log": True, "default": []},
    "backup_dir": {"type": "path"},
    "pg_bin_dir": {"type": "path"},
}

DUMP = {
    "format": {"type": "str", "choices": list(settings.FORMATS), "default": "plain"},
    "compression": {"type": "str", "choices": list(compress.COMPRESSIONS), "default": "gzip"},
    "compression_level": {"type": "int"},
    "jobs": {"type": "int", "default": 2},
    "threads": {"type": "int", "default": 2},
    "pg_dump_args": {"type": "list", "elements": "str", "default": []},
    "retention": {"type": "dict", "default": {}},
}

# Notifications, backup log and metrics (notify.py, eventlog.py, metrics.py).
MONITORING = {
    "notify_email": {"type": "list", "elements": "str", "default": []},
    "notify_on": {
        "type": "list",
        "elements": "str",
        "choices": list(notify.OUTCOMES),
        "default": list(notify.OUTCOMES),
    },
    "smtp_host": {"type": "str", "default": "localhost"},
    "smtp_port": {"type": "int"},
    "smtp_security": {"type": "str", "choices": list(notify.SECURITY), "default": "none"},
    "smtp_user": {"type": "str"},
    "smtp_password": {"type": "str", "no_log": True},
    "smtp_sender": {"type": "str"},
    "slack_webhook_url": {"type": "str", "no_log": True},
    "webhook_url": {"type": "str", "no_log": True},
    "notify_timeout": {"type": "float", "default": 10},
    "log_file": {"type": "path"},
    "log_format": {"type": "str", "choices": list(eventlog.FORMATS), "default": "text"},
    "metrics_dir": {"type": "path"},
}

# Off-site copies (s3.py). No credential options on purpose: the AWS chain provides them.
S3 = {
    "s3_bucket": {"type": "str"},
    "s3_prefix": {"type": "str", "default": "backups"},
    "s3_endpoint_url": {"type": "str"},
    "s3_region": {"type": "str"},
    "s3_sse": {"type": "str", "choices": ["AES256", "aws:kms"]},
    "s3_sse_kms_key_id": {"type": "str"},
    "s3_part_size_mb": {"type": "int", "default": 8},
    "s3_max_attempts": {"type": "int", "default": 5},
}

# Client-side encryption with age (encrypt.py). Recipients are public keys; the
# identity is passed as a path only, so the key itself never goes through Ansible.
ENCRYPT = {
    "encrypt_recipients": {"type": "list", "elements": "str", "default": []},
    "encrypt_identity_file": {"type": "path"},
}

STATUS = {"status_max_age_hours": {"type": "dict", "default": {}}}

# Restore drills (drill.py) and cluster globals (cluster_globals.py).
VERIFY = {
    "verify_queries": {"type": "raw", "default": []},
    "drill_server": {"type": "str", "no_log": True},
}
GLOBALS = {
    "globals": {"type": "bool", "default": False},
    "globals_passwords": {"type": "bool", "default": False},
}

BACKUP_TYPE = {"type": "str", "choices": list(naming.SCHEDULED_TYPES), "default": "daily"}


def settings_params(params: dict) -> dict:
    """The module parameters that are settings (drops the module's own options)."""
    return {key: value for key, value in params.items() if key in settings.DEFAULTS}


def exit_with(module, results: list, noun: str, changed: bool, summary: list | None = None):
    """End a module run the same way everywhere: every result's warnings, then
    `fail_json` naming each failure when any failed (after all ran), else `exit_json`.

    `module` is the AnsibleModule (duck-typed: this package never imports Ansible).
    """
    if summary is None:
        summary = [r.summary() for r in results]
    payload = {"results": [r.as_dict() for r in results], "summary": summary}
    for result in results:
        for warning in result.warnings:
            module.warn(warning)
    failed = [r for r in results if not r.ok]
    if failed:
        module.fail_json(
            msg=f"{len(failed)} of {len(results)} {noun} failed: "
            + " | ".join(r.summary() for r in failed),
            changed=changed,
            **payload,
        )
    module.exit_json(changed=changed, **payload)
