"""pgbackrest.conf for a stanza, and the target time a restore asks for."""

from __future__ import annotations

import re
from datetime import datetime, timezone

from ..errors import ConfigError


def render_config(settings) -> str:
    """pgbackrest.conf for this host's stanza (the lifeboat_pitr role writes the same file).

    Retention in the GFS spirit of the dumps: full backups (weekly) kept
    `pitr_retention_full`, differential ones (daily) `pitr_retention_diff`;
    WAL is kept as long as the backups that need it.
    """
    lines = [
        "[global]",
        f"repo1-path={settings.pitr_repo_path}",
        "repo1-retention-full-type=count",
        f"repo1-retention-full={settings.pitr_retention_full}",
        f"repo1-retention-diff={settings.pitr_retention_diff}",
        f"log-path={settings.pitr_log_path}",
        f"lock-path={settings.pitr_lock_path}",
        "start-fast=y",
        "compress-type=zst",
        "log-level-console=warn",
        "log-level-file=info",
    ]
    if settings.pitr_s3_bucket:
        lines += [
            "repo1-type=s3",
            f"repo1-s3-bucket={settings.pitr_s3_bucket}",
            f"repo1-s3-region={settings.pitr_s3_region}",
            f"repo1-s3-uri-style={settings.pitr_s3_uri_style}",
            f"repo1-storage-verify-tls={'y' if settings.pitr_s3_verify_tls else 'n'}",
            # Small files bundled into a few objects: a request per file made a base
            # backup of a fresh cluster some 1300 PUTs (pgBackRest's guide for object stores).
            "repo1-bundle=y",
        ]
        if settings.pitr_s3_ca_file:  # a private CA (MinIO, Ceph): verified, not turned off
            lines.append(f"repo1-storage-ca-file={settings.pitr_s3_ca_file}")
        endpoint = settings.pitr_s3_endpoint or f"s3.{settings.pitr_s3_region}.amazonaws.com"
        endpoint = endpoint.removeprefix("https://").rstrip("/")
        if endpoint.startswith("http://"):
            raise ConfigError(
                f"Failed to configure pgBackRest: pitr_s3_endpoint {endpoint} is plain HTTP.",
                "pgBackRest speaks HTTPS only: give host[:port] of a TLS endpoint.",
            )
        host, _, port = endpoint.partition(":")
        lines.append(f"repo1-s3-endpoint={host}")
        if port:
            lines.append(f"repo1-storage-port={port}")
        if settings.pitr_s3_key:
            lines += [
                "repo1-s3-key=" + settings.pitr_s3_key,
                "repo1-s3-key-secret=" + (settings.pitr_s3_key_secret or ""),
            ]
        else:  # pgBackRest reads no AWS chain: without keys it fails unless told to ask EC2
            lines.append("repo1-s3-key-type=auto")
    lines += [
        "",
        f"[{settings.pitr_stanza}]",
        f"pg1-path={settings.pitr_pg_data}",
        f"pg1-port={settings.pitr_pg_port}",
        f"pg1-socket-path={settings.pitr_pg_socket_dir}",
    ]
    return "\n".join(lines) + "\n"


def archive_command(settings) -> str:
    """The archive_command that pushes WAL into this stanza."""
    return (
        f"pgbackrest --config={settings.pitr_config} --stanza={settings.pitr_stanza} "
        "archive-push %p"
    )


def parse_target(text: str) -> datetime:
    """'YYYY-MM-DD HH:MM:SS+00' (any ISO 8601 time with an offset) as an aware UTC time."""
    hint = "Give the time with its UTC offset, e.g. --time '2026-11-30 10:42:00+00'."
    if re.fullmatch(r"\s*\d{4}-\d{2}-\d{2}\s*", str(text)):
        # What `-e restore_time='2026-11-30 10:42:00+00'` leaves: Ansible splits on the space.
        raise ConfigError(
            f"Failed to read the restore time {text!r}: a date without a time.",
            "Give date, time and zone. With ansible-playbook -e, quote it for Ansible too "
            "(-e \"restore_time='2026-11-30 10:42:00+00'\") or join them with a T "
            "(-e restore_time=2026-11-30T10:42:00+00).",
        )
    try:
        when = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"Failed to read the restore time {text!r}: not a time.", hint) from None
    if when.tzinfo is None:
        raise ConfigError(
            f"Failed to read the restore time {text!r}: it has no time zone (ambiguous).", hint
        )
    return when.astimezone(timezone.utc)


def target_text(when: datetime) -> str:
    """The time as PostgreSQL's recovery_target_time reads it, in UTC."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
