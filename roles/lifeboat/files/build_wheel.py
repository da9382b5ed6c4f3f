"""Build the lifeboat wheel from a checkout or the installed collection, on the control node.

Usage: python build_wheel.py SOURCE_DIR OUT_DIR  -> prints the wheel's path.

Only the package sources are copied to a scratch directory (the checkout is
never written to), and SOURCE_DATE_EPOCH pins the zip timestamps: the same
sources give the same bytes, so the host's copy task stays unchanged and
re-provisioning is idempotent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def prune(out_dir: Path, keep: Path, days: int = 7) -> None:
    """Drop cached wheels not built for a week."""
    cutoff = time.time() - days * 86400
    for entry in out_dir.iterdir():
        if entry.is_dir() and entry != keep and entry.stat().st_mtime < cutoff:
            shutil.rmtree(entry, ignore_errors=True)


def main(source: str, out: str) -> int:
    src = Path(source).resolve()
    out_dir = Path(out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # A checkout keeps the engine in module_utils/, the installed collection
    # (lifeboat.postgresql, which ships pyproject.toml too) in plugins/module_utils/.
    engines = [src / "module_utils" / "lifeboat", src / "plugins" / "module_utils" / "lifeboat"]
    engine = next((e for e in engines if (e / "__init__.py").is_file()), None)
    if engine is None or not (src / "pyproject.toml").is_file():
        sys.stderr.write(
            f"Failed to build the lifeboat wheel: {src} is neither a lifeboat checkout nor the "
            "installed lifeboat.postgresql collection (no module_utils/lifeboat or "
            "plugins/module_utils/lifeboat with pyproject.toml). Set lifeboat_source_dir to one.\n"
        )
        return 1
    with tempfile.TemporaryDirectory(prefix="lifeboat-wheel-") as tmp:
        tree = Path(tmp) / "src"
        shutil.copytree(
            engine,
            tree / "module_utils" / "lifeboat",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(src / name, tree / name)
        build = Path(tmp) / "dist"
        env = dict(os.environ, SOURCE_DATE_EPOCH="315532800", PIP_DISABLE_PIP_VERSION_CHECK="1")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(build), str(tree)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        wheels = sorted(build.glob("lifeboat-*.whl"))
        if proc.returncode != 0 or not wheels:
            sys.stderr.write(proc.stdout + proc.stderr)
            sys.stderr.write(
                f"Failed to build the lifeboat wheel from {src}. Check that "
                "pip can install setuptools (build isolation) on this control node.\n"
            )
            return 1
        # One directory per content: concurrent provisions from different
        # checkouts never hand each other's wheel to the copy task.
        digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()[:16]
        target_dir = out_dir / digest
        target_dir.mkdir(exist_ok=True)
        target = target_dir / wheels[0].name
        partial = target_dir / f".{wheels[0].name}.{os.getpid()}"
        shutil.copyfile(wheels[0], partial)
        os.replace(partial, target)
    prune(out_dir, keep=target.parent)
    print(target)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: build_wheel.py SOURCE_DIR OUT_DIR")
    sys.exit(main(sys.argv[1], sys.argv[2]))
