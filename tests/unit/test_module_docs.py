"""Each module documents exactly the options it accepts (fragments included).

Covers library/ and the modules roles carry in roles/*/library/.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import ansible.module_utils
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILES = sorted(
    [*(ROOT / "library").glob("lifeboat_*.py"), *(ROOT / "roles").glob("*/library/*.py")]
)
MODULES = [p.stem for p in MODULE_FILES]
PATHS = {p.stem: p for p in MODULE_FILES}
# Let `from ansible.module_utils.lifeboat import ...` resolve as AnsiballZ makes it.
ansible.module_utils.__path__.append(str(ROOT / "module_utils"))


class _Captured(Exception):
    pass


def argument_spec(name: str) -> dict:
    spec = importlib.util.spec_from_file_location(name, PATHS[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    captured = {}

    def fake(argument_spec, **_):
        captured.update(argument_spec)
        raise _Captured

    module.AnsibleModule = fake
    with pytest.raises(_Captured):
        module.main()
    return captured


def documented(name: str) -> set[str]:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-M", str(PATHS[name].parent),
         "--json", name],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return set(json.loads(out.stdout)[name]["doc"]["options"])


@pytest.mark.parametrize("name", MODULES)
def test_documented_options_match_the_argument_spec(name):
    assert documented(name) == set(argument_spec(name))


def test_role_embedded_modules_are_covered():
    assert "postgresql_server_major" in MODULES
