"""Every setting the engine accepts is documented where users look for it."""

import re
from pathlib import Path

from lifeboat import settings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_is_in_the_configuration_doc():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`([a-z0-9_]+)`", doc))
    documented |= {f"smtp_{part}" for part in ("host", "port", "user", "security", "sender")}
    missing = sorted(key for key in settings.DEFAULTS if key not in documented)
    assert missing == [], f"add these settings to docs/configuration.md: {missing}"


def test_every_setting_has_a_role_default():
    defaults = (ROOT / "roles" / "lifeboat" / "defaults" / "main.yml").read_text()
    missing = sorted(k for k in settings.DEFAULTS if f"lifeboat_{k}:" not in defaults)
    assert missing == [], f"add these to roles/lifeboat/defaults/main.yml: {missing}"
