"""Run ansible-test's validate-modules sanity check on the built collection.

Usage: python tools/collection_sanity.py   (after tools/build_collection.py)

ansible-test runs each sanity test in a venv of its own, bootstrapped with a
get-pip script it downloads from ci-files.testing.ansible.com, which this
network cannot reach. Its documented way out is a script already in its cache
(~/.ansible/test/cache/get_pip_<version>.py); ours is a stand-in that takes pip
from the stdlib's ensurepip and then installs what ansible-test asked for
through the configured package index. HOME points into .cache/ so neither the
stand-in nor the cached venv touches the user's home. After the first run
(about 20 s) the venv is reused and nothing is fetched.

The tree is checked from a copy outside the checkout: inside it, ansible-test
lists files with git, which ignores build/, and would find nothing to check.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import ansible_test

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "collection" / "ansible_collections" / "lifeboat" / "postgresql"
HOME = ROOT / ".cache" / "ansible-test"

GET_PIP = '''\
"""get-pip stand-in for ansible-test (written by lifeboat tools/collection_sanity.py)."""
import subprocess
import sys

# In a child: ensurepip hides the pip configuration (index, certificates) from
# its own process's environment.
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
'''


def pip_version() -> str:
    """The pip ansible-test pins for its sanity venvs (get_venv_packages)."""
    source = (
        Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
    ).read_text()
    found = re.search(r"default_packages = dict\(\s*pip='([\d.]+)'", source)
    if not found:
        sys.exit(
            "Failed to find the pip version ansible-test bootstraps in its sources. "
            "Update tools/collection_sanity.py."
        )
    return found[1]


def main() -> int:
    if not (TREE / "galaxy.yml").exists():
        sys.exit(
            f"Failed to run sanity checks: no collection at {TREE}. Run `make collection` first."
        )
    cache = HOME / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"get_pip_{pip_version().replace('.', '_')}.py").write_text(GET_PIP)
    bindir = Path(sys.executable).parent
    env = dict(os.environ, HOME=str(HOME), PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    cmd = [
        str(bindir / "ansible-test"),
        "sanity",
        "--test",
        "validate-modules",
        "--python",
        python,
        "--color",
        "no",
    ]
    with tempfile.TemporaryDirectory(prefix="lifeboat-sanity-") as tmp:
        tree = Path(tmp) / TREE.relative_to(TREE.parents[2])  # .../ansible_collections/NS/NAME
        shutil.copytree(TREE, tree)
        shutil.rmtree(tree / "tests" / "output", ignore_errors=True)  # results of a past run
        return subprocess.run(cmd, cwd=tree, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
