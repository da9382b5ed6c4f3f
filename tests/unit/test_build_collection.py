"""tools/build_collection.py fails loudly when a rename would leave the collection broken."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("library", "module_utils", "doc_fragments", "roles", "playbooks", "docs", "requirements")


@pytest.fixture
def source(tmp_path):
    """A copy of what the collection is built from."""
    src = tmp_path / "src"
    for name in SOURCES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    return src


def build(src: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_collection.py"), "--no-tarball",
         "--source", str(src), "--build-dir", str(tmp_path / "build")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_unchanged_sources_build(source, tmp_path):
    proc = build(source, tmp_path)
    assert proc.returncode == 0, proc.stderr
    tree = tmp_path / "build" / "collection" / "ansible_collections" / "lifeboat" / "postgresql"
    backup = (tree / "plugins" / "modules" / "backup.py").read_text()
    assert "ansible.module_utils.lifeboat" not in backup
    assert "lifeboat.postgresql.lifeboat.s3" in backup
    assert "lifeboat.postgresql.backup:" in (tree / "roles/lifeboat/tasks/backup.yml").read_text()
    assert not (tree / "roles" / "postgresql_client" / "library").exists()


def rename_module(src: Path) -> None:
    """The module and its own docs renamed, the role's task forgotten."""
    old = src / "library" / "lifeboat_verify.py"
    (src / "library" / "lifeboat_check.py").write_text(
        old.read_text().replace("lifeboat_verify", "lifeboat_check")
    )
    old.unlink()


def new_import_style(src: Path) -> None:
    path = src / "library" / "lifeboat_status.py"
    path.write_text(path.read_text().replace("ansible.module_utils.lifeboat", "lifeboat"))


def unknown_fragment(src: Path) -> None:
    edit(src / "library" / "lifeboat_backup.py", "  - lifeboat.s3\n", "  - lifeboat.s4\n")


def role_renamed(src: Path) -> None:
    for path in (src / "playbooks").glob("*.yml"):
        path.write_text(path.read_text().replace("name: lifeboat\n", "name: lifeboat_main\n"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (rename_module, "no task calls the modules ['lifeboat_check']"),
        (new_import_style, "expected imports of ansible.module_utils.lifeboat"),
        (unknown_fragment, "unknown doc fragments ['lifeboat.s4']"),
        (role_renamed, "expected role references"),
    ],
)
def test_a_rename_fails_the_build(source, tmp_path, change, message):
    change(source)
    proc = build(source, tmp_path)
    assert proc.returncode == 1
    assert "Failed to build the lifeboat.postgresql collection" in proc.stderr
    assert message in proc.stderr
