"""secrets_file: database URLs kept in a 0600 file apart from lifeboat.yml (lifeboat role)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from lifeboat.errors import ConfigError
from lifeboat.settings import load_file, resolve

ROOT = Path(__file__).resolve().parents[2]
URL = "postgresql://app:s3cr%40t@db.internal:5432/plotzed"


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def config(tmp_path):
    write(tmp_path / "secrets.yml", f"database_url: {URL}\n", 0o600)
    return write(
        tmp_path / "lifeboat.yml",
        "backup_dir: /var/backups/lifeboat\nformat: custom\nsecrets_file: secrets.yml\n",
        0o644,
    )


def test_secrets_file_is_merged_relative_to_the_config(config):
    data = load_file(str(config))
    assert data == {"backup_dir": "/var/backups/lifeboat", "format": "custom", "database_url": URL}
    settings = resolve(data)
    assert settings.targets[0].conn.password == "s3cr@t"
    assert settings.format == "custom"


def test_secrets_win_over_the_config_and_take_the_prefix(tmp_path):
    secrets = write(tmp_path / "s.yml", "lifeboat_databases:\n  - url: " + URL + "\n", 0o600)
    cfg = write(tmp_path / "c.yml", f"databases: []\nsecrets_file: {secrets}\n", 0o644)
    assert load_file(str(cfg))["databases"] == [{"url": URL}]


def test_missing_secrets_file_says_what_to_do(tmp_path):
    cfg = write(tmp_path / "c.yml", "secrets_file: /nonexistent/secrets.yml\n", 0o644)
    with pytest.raises(ConfigError) as err:
        load_file(str(cfg))
    assert "does not exist" in str(err.value)
    assert "0600" in str(err.value)


def test_world_readable_secrets_file_is_refused(config):
    (config.parent / "secrets.yml").chmod(0o644)
    with pytest.raises(ConfigError) as err:
        load_file(str(config))
    assert "chmod 600" in str(err.value)


def test_bad_yaml_in_secrets_file_is_not_echoed(tmp_path):
    write(tmp_path / "s.yml", "database_url: [postgresql://u:hunter2@h/db\n", 0o600)
    cfg = write(tmp_path / "c.yml", "secrets_file: s.yml\n", 0o644)
    with pytest.raises(ConfigError) as err:
        load_file(str(cfg))
    assert "hunter2" not in str(err.value)


def test_cli_reads_the_secrets_file(config, tmp_path):
    env = dict(os.environ, LIFEBOAT_BACKUP_DIR=str(tmp_path / "store"))
    env.pop("DATABASE_URL", None)
    proc = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "lifeboat"), "backup", "--dry-run", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "plotzed-daily-backup-" in proc.stdout
    assert "s3cr" not in proc.stdout + proc.stderr
