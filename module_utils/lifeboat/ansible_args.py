"""Argument specs shared by the Ansible modules (plain dicts: no Ansible import).

Every secret is `no_log`. The keys are the settings' keys, so a module hands
its parameters to `settings.resolve` unchanged.
"""

from __future__ import annotations

from . import compress, naming, settings

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

BACKUP_TYPE = {"type": "str", "choices": list(naming.SCHEDULED_TYPES), "default": "daily"}


def settings_params(params: dict) -> dict:
    """The module parameters that are settings (drops the module's own options)."""
    return {key: value for key, value in params.items() if key in settings.DEFAULTS}
