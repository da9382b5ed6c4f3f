"""Argument specs and result reporting shared by the Ansible modules (no Ansible import).

Every secret is `no_log`. The keys are the settings' keys, so a module hands
its parameters to `settings.resolve` unchanged.
"""

from __future__ import annotations

from . import naming, schema

# Generated from the settings' one declaration (schema.py) when a module is imported.
CONNECTION = schema.argument_spec("connection")
DUMP = schema.argument_spec("dump")
# Notifications, backup log and metrics (notify.py, eventlog.py, metrics.py).
MONITORING = schema.argument_spec("monitoring")
# Off-site copies (s3.py). No credential options on purpose: the AWS chain provides them.
S3 = schema.argument_spec("s3")
# Client-side encryption with age (encrypt.py). Recipients are public keys; the
# identity is passed as a path only, so the key itself never goes through Ansible.
ENCRYPT = schema.argument_spec("encrypt")
STATUS = schema.argument_spec("status")
# Restore drills (drill.py) and cluster globals (cluster_globals.py).
VERIFY = schema.argument_spec("verify")
GLOBALS = schema.argument_spec("globals")
# What a point-in-time restore needs beyond pgbackrest.conf (pitr/).
PITR = schema.argument_spec(
    "pitr_stanza",
    "pitr_config",
    "pitr_os_user",
    "pitr_work_dir",
    "pitr_archive_timeout",
    "pitr_recovery_timeout",
)

BACKUP_TYPE = {"type": "str", "choices": list(naming.SCHEDULED_TYPES), "default": "daily"}


# Keys of a `databases` item whose values are credentials. The other values
# (`name`, ...) label files and output and are not secret.
SECRET_ITEM_KEYS = frozenset({"url", "password"})


def _password(text: str) -> str | None:
    """The password inside a connection string, read with libpq's own parser."""
    from .conninfo import libpq

    try:
        options = libpq().parse(text)
    except Exception:  # no libpq, or a string libpq refuses: the whole string stays hidden
        return None
    return next((o.val for o in options if o.keyword == "password" and o.val), None)


def mask_credentials_only(module) -> None:
    """Hide credentials in module output, and nothing else.

    `databases` is `no_log` in the argument spec because its items are either
    connection strings or dicts, and Ansible can only mark suboptions of dict
    elements; so when the invocation is logged the whole list is hidden. Call
    this right after `AnsibleModule(...)`: every item's labels (e.g. `name`) are
    revealed again in results and `invocation`, while connection strings and
    their passwords (also on their own, percent-decoded) stay masked.
    """
    params = module.params
    items = list(params.get("databases") or [])
    secrets, labels = set(), set()
    for item in [params.get("database_url"), params.get("drill_server"), *items]:
        fields = item if isinstance(item, dict) else {"url": item}
        for key, value in fields.items():
            if value is None or isinstance(value, (bool, dict, list)):
                continue
            if key in SECRET_ITEM_KEYS:
                secrets.add(str(value))
                if key == "url":
                    secrets.add(_password(str(value)) or "")
            else:
                labels.add(str(value))
    secrets.discard("")
    module.no_log_values.difference_update(labels - secrets)
    module.no_log_values.update(secrets)


def settings_params(params: dict) -> dict:
    """The module parameters that are settings (drops the module's own options)."""
    return {key: value for key, value in params.items() if key in schema.BY_NAME}


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
