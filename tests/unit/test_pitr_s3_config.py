"""An S3 pgBackRest repository, the pure parts: the TLS and bundling lines of
pgbackrest.conf, and an unreadable repository told apart from an empty one."""

from __future__ import annotations

import json

import pytest

from lifeboat import settings
from lifeboat.errors import PitrFailed
from lifeboat.pitr import backrest, config


def _s3(**extra):
    return settings.resolve(
        {
            "database_url": "postgresql:///app",
            "pitr": True,
            "pitr_s3_bucket": "pitr",
            "pitr_s3_endpoint": "minio.internal:9000",
            "pitr_s3_uri_style": "path",
            **extra,
        }
    )


def test_a_private_ca_is_verified_with_its_file():
    text = config.render_config(_s3(pitr_s3_ca_file="/etc/ssl/minio-ca.pem"))
    assert "repo1-storage-verify-tls=y\n" in text
    assert "repo1-storage-ca-file=/etc/ssl/minio-ca.pem\n" in text
    assert "repo1-bundle=y\n" in text  # a few objects per backup, not one per file
    plain = config.render_config(_s3())
    assert "repo1-storage-ca-file" not in plain and "repo1-bundle=y\n" in plain
    # No keys: the EC2 instance role's (pgBackRest would otherwise refuse to start).
    assert "repo1-s3-key-type=auto\n" in plain and "repo1-s3-key=" not in plain
    keyed = config.render_config(_s3(pitr_s3_key="AKIA", pitr_s3_key_secret="s3cret"))
    assert "repo1-s3-key-type" not in keyed and "repo1-s3-key-secret=s3cret\n" in keyed
    local = config.render_config(settings.resolve({"database_url": "postgresql:///app"}))
    assert "repo1-bundle" not in local and "repo1-storage" not in local


def _info(code: int, repo_message: str) -> str:
    return json.dumps(
        [
            {
                "name": "main",
                "archive": [],
                "backup": [],
                "db": [],
                "repo": [{"key": 1, "status": {"code": code, "message": repo_message}}],
                "status": {"code": code, "message": "other" if code == 99 else repo_message},
            }
        ]
    )


def test_an_unreadable_repository_is_not_an_empty_one():
    said = "[CryptoError] unable to verify certificate presented by 'minio.internal:9000'"
    with pytest.raises(PitrFailed, match="unable to verify certificate") as told:
        backrest.parse_info(_info(99, said), "main")
    assert "repo1-storage-ca-file" in told.value.hint
    empty = backrest.parse_info(_info(2, "no valid backups"), "main")
    assert empty.backups == [] and empty.status == "no valid backups"
