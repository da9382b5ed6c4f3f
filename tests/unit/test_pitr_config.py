"""Point-in-time recovery, the pure parts: target times, pgbackrest.conf, `info` output,
the choice of base backup and the refusals that come before any instance starts."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from lifeboat import settings
from lifeboat.errors import ConfigError, RestoreRefused
from lifeboat.pitr import backrest, config, planning
from lifeboat.restore import Request

ROOT = Path(__file__).resolve().parents[2]
UTC = timezone.utc


def _settings(**extra):
    return settings.resolve({"database_url": "postgresql:///app", "pitr": True, **extra})


def test_target_time_needs_a_zone_and_is_kept_in_utc():
    at = datetime(2026, 11, 30, 10, 42, tzinfo=UTC)
    assert config.parse_target("2026-11-30 10:42:00+00") == at
    assert config.parse_target("2026-11-30T12:42:00+02:00") == at
    assert config.target_text(at).endswith("+00")
    with pytest.raises(ConfigError, match="no time zone"):
        config.parse_target("2026-11-30 10:42:00")
    with pytest.raises(ConfigError, match="date without a time") as told:
        config.parse_target("2026-11-30")  # what -e restore_time='... ...' leaves
    assert "T10:42:00+00" in told.value.hint
    assert config.parse_target("2026-11-30T10:42:00+00") == at
    with pytest.raises(ConfigError, match="not a time"):
        config.parse_target("yesterday")
    with pytest.raises(ConfigError, match="exactly one source"):
        Request(latest=True, time="2026-11-30 10:42:00+00").check()


def test_local_and_s3_repositories_render():
    local = config.render_config(_settings(pitr_repo_path="/srv/repo", pitr_stanza="db1"))
    assert "repo1-path=/srv/repo\n" in local and "[db1]\n" in local
    assert "repo1-type" not in local
    assert "repo1-retention-full=4\n" in local and "repo1-retention-diff=7\n" in local
    s3 = config.render_config(
        _settings(
            pitr_s3_bucket="pitr-bucket",
            pitr_s3_endpoint="https://minio.internal:9000/",
            pitr_s3_verify_tls=False,
            pitr_s3_uri_style="path",
            pitr_s3_key="AKIA",
            pitr_s3_key_secret="s3cret",
        )
    )
    for line in (
        "repo1-type=s3",
        "repo1-s3-bucket=pitr-bucket",
        "repo1-s3-endpoint=minio.internal",
        "repo1-storage-port=9000",
        "repo1-storage-verify-tls=n",
        "repo1-s3-uri-style=path",
        "repo1-s3-key-secret=s3cret",
    ):
        assert line + "\n" in s3
    with pytest.raises(ConfigError, match="HTTPS only"):
        config.render_config(_settings(pitr_s3_bucket="b", pitr_s3_endpoint="http://x:9000"))


def _info(*stops: int) -> str:
    backups = [
        {
            "label": f"B{i}",
            "type": "full" if i == 0 else "diff",
            "error": False,
            "timestamp": {"start": stop - 60, "stop": stop},
            "archive": {"start": f"00000001000000000000000{i}", "stop": "x"},
            "info": {"size": 1000},
        }
        for i, stop in enumerate(stops)
    ]
    return json.dumps(
        [
            {
                "name": "main",
                "backup": backups,
                "archive": [{"min": "000000010000000000000001", "max": "00000001000000000000000F"}],
                "db": [{"version": "15"}],
                "status": {"message": "ok"},
            }
        ]
    )


def test_the_newest_base_backup_finished_before_the_time_is_chosen():
    base = 1_800_000_000
    repo = backrest.parse_info(_info(base, base + 3600), "main")
    now = datetime.fromtimestamp(base + 7200, UTC)
    s = _settings()
    assert planning.check_time(now - timedelta(minutes=10), repo, now, s).label == "B1"
    assert planning.check_time(now - timedelta(minutes=90), repo, now, s).label == "B0"
    with pytest.raises(RestoreRefused, match="before the recoverable window"):
        planning.check_time(now - timedelta(hours=3), repo, now, s)
    with pytest.raises(RestoreRefused, match="in the future"):
        planning.check_time(now + timedelta(minutes=1), repo, now, s)
    empty = backrest.parse_info(_info(), "main")
    with pytest.raises(RestoreRefused, match="no base backup yet"):
        planning.check_time(now, empty, now, s)


def test_the_role_documents_its_own_variables():
    spec = yaml.safe_load((ROOT / "roles/lifeboat_pitr/meta/argument_specs.yml").read_text())
    doc = (ROOT / "docs/provisioning.md").read_text() + (ROOT / "docs/configuration.md").read_text()
    missing = [name for name in spec["argument_specs"]["main"]["options"] if f"`{name}`" not in doc]
    assert not missing


def test_a_host_without_pgbackrest_config_is_told_how_to_turn_it_on(tmp_path):
    s = _settings(pitr_config=str(tmp_path / "missing.conf"))
    with pytest.raises(ConfigError, match="lifeboat_pitr: true"):
        backrest.info(s)
