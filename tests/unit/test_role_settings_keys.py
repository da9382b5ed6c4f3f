"""The lifeboat role writes every engine setting to the right file on a host.

roles/lifeboat/vars/main.yml lists which settings go to the readable
lifeboat.yml and which to the 0600 secrets.yml; a setting added to the engine
but not to a list would never reach provisioned hosts, and a secret listed as
a plain setting would land in a world-readable file.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from lifeboat import settings

ROLE = Path(__file__).resolve().parents[2] / "roles" / "lifeboat"


def role_vars() -> dict:
    return yaml.safe_load((ROLE / "vars" / "main.yml").read_text())


def test_every_engine_setting_has_a_home_on_the_host():
    internals = role_vars()
    listed = set(internals["lifeboat_config_keys"]) | set(internals["lifeboat_secret_keys"])
    assert listed == set(settings.DEFAULTS), (
        "Add the setting to lifeboat_config_keys or lifeboat_secret_keys in "
        "roles/lifeboat/vars/main.yml"
    )


def test_secrets_only_go_to_the_secrets_file():
    internals = role_vars()
    assert set(internals["lifeboat_secret_keys"]) == set(settings.SECRET_KEYS)
    assert not set(internals["lifeboat_config_keys"]) & set(settings.SECRET_KEYS)
