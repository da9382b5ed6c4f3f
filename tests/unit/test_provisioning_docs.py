"""docs/provisioning.md documents every variable the provisioning roles declare.

The roles' meta/argument_specs.yml is the source of truth (it validates the
variables before any task runs); this keeps the docs' tables in step with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "provisioning.md").read_text()


def options(role: str, entry: str = "main") -> set[str]:
    spec = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return set(spec["argument_specs"][entry]["options"])


@pytest.mark.parametrize("role", ["postgresql_client", "awscli", "backup_schedule"])
def test_every_role_variable_is_documented(role):
    missing = sorted(name for name in options(role) if f"`{name}`" not in DOC)
    assert not missing, f"add {missing} to docs/provisioning.md"


def test_lifeboat_install_variables_are_documented():
    # The settings shared with the backup entry point are in docs/configuration.md.
    install_only = options("lifeboat") - options("lifeboat", "backup")
    missing = sorted(name for name in install_only if f"`{name}`" not in DOC)
    assert not missing, f"add {missing} to docs/provisioning.md"
