"""Pure parts of the S3 store: part sizing, URL parsing, error wording, settings."""

from __future__ import annotations

import subprocess

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from conftest import ROOT

from lifeboat import s3
from lifeboat.errors import ConfigError
from lifeboat.settings import from_environment, resolve

MIB = 1 << 20
TIB = 1 << 40
URL = "postgresql://u@localhost/app"


def test_parts_grow_so_the_part_cap_is_never_hit():
    assert s3.part_size(1, 8 * MIB) == 8 * MIB
    assert s3.part_size(1000, 8 * MIB) == 8 * MIB
    assert s3.part_size(1001, 8 * MIB) == 16 * MIB
    assert s3.part_size(10_000, 8 * MIB) == 4096 * MIB
    assert all(s3.part_size(n, 5120 * MIB) <= s3.PART_MAX for n in range(1, 10_001))
    # The default reaches past S3's 5 TiB object limit within 10,000 parts.
    assert s3.capacity(8 * MIB) > 5 * TIB
    assert s3.capacity(5 * MIB) > 4.8 * TIB


def test_s3_urls_resolve_to_bucket_prefix_and_store_path():
    settings = resolve({"database_url": URL, "s3_endpoint_url": "http://127.0.0.1:9000"})
    store, path = s3.store_for_url(
        settings, "s3://bkt/team/host1/daily/app-daily-backup-2025-01-15T02-00-00.sql.gz"
    )
    assert (store.bucket, store.prefix, path) == (
        "bkt",
        "team/host1",
        "daily/app-daily-backup-2025-01-15T02-00-00.sql.gz",
    )
    assert store.endpoint_url == "http://127.0.0.1:9000"
    assert store.url(path).startswith("s3://bkt/team/host1/daily/")
    for bad in ("https://bkt/x", "s3://", "s3://bkt/", "s3://bkt/daily/notes.txt"):
        with pytest.raises(ConfigError):
            s3.store_for_url(settings, bad)


def client_error(code: str, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "PutObject")


@pytest.mark.parametrize(
    ("exc", "cause", "hint"),
    [
        (client_error("NoSuchBucket"), "bucket does not exist", "aws s3 mb"),
        (client_error("InvalidAccessKeyId"), "refused the credentials", "AWS_ACCESS_KEY_ID"),
        (client_error("AccessDenied"), "access denied", "IAM policy"),
        (client_error("SlowDown", "Reduce your request rate"), "SlowDown", "again"),
        (NoCredentialsError(), "no AWS credentials", "instance role"),
        (EndpointConnectionError(endpoint_url="http://x"), "cannot reach", "AWS_ENDPOINT_URL"),
    ],
)
def test_errors_name_the_cause_and_what_to_do(exc, cause, hint):
    said, todo = s3.describe_error(exc)
    assert cause in said and hint in todo


def test_only_transient_errors_are_retried_by_hand():
    assert s3._is_transient(client_error("SlowDown"))
    assert s3._is_transient(client_error("InternalError"))
    assert s3._is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert not s3._is_transient(client_error("AccessDenied"))
    assert not s3._is_transient(NoCredentialsError())


def test_settings_read_the_guides_variables_and_check_encryption():
    env = {"BACKUP_S3_BUCKET": "my-backups", "AWS_ENDPOINT_URL": "http://minio:9000"}
    settings = resolve({"database_url": URL}, from_environment(env))
    assert (settings.s3_bucket, settings.s3_prefix) == ("my-backups", "backups")
    assert settings.s3_endpoint_url == "http://minio:9000"
    kms = resolve(
        {"database_url": URL, "s3_bucket": "b", "s3_sse": "aws:kms", "s3_sse_kms_key_id": "alias/b"}
    )
    store = s3.S3Store.from_settings(kms)
    assert store is not None and store.sse_args() == {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "alias/b",
    }
    assert store.encryption() == {"sse": "aws:kms", "sse_kms_key_id": "alias/b"}
    assert s3.S3Store.from_settings(resolve({"database_url": URL})) is None
    with pytest.raises(ConfigError, match="AES256 or aws:kms"):
        resolve({"database_url": URL, "s3_sse": "DES"})
    with pytest.raises(ConfigError, match="not aws:kms"):
        resolve({"database_url": URL, "s3_sse": "AES256", "s3_sse_kms_key_id": "k"})
    with pytest.raises(ConfigError, match="5 to 5120"):
        resolve({"database_url": URL, "s3_part_size_mb": 1})
    # A directory dump goes to S3 as one tar (dirtar.py; tests/integration/test_s3_directory.py).
    assert resolve({"database_url": URL, "format": "directory", "s3_bucket": "b"}).s3_bucket == "b"


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def test_boto3_is_imported_only_when_s3_is_configured():
    proc = run_python(
        "import sys; from lifeboat import backup, cli, restore, settings; "
        "assert backup.s3_store_for(settings.resolve({'database_url': 'postgresql://h/d'})) "
        "is None; assert 'boto3' not in sys.modules, 'boto3 imported eagerly'"
    )
    assert proc.returncode == 0, proc.stderr


def test_missing_boto3_is_a_clear_error():
    proc = run_python(
        "import sys; sys.modules['boto3'] = None\n"
        "from lifeboat import s3\n"
        "try:\n    s3.S3Store('b').client\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    assert proc.stdout.startswith("ConfigError")
    assert "boto3 package is not installed" in proc.stdout and "pip install boto3" in proc.stdout
