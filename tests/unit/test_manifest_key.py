"""manifest_key: sealing and checking manifests, the keyring and its file."""

from __future__ import annotations

import base64
import json
import os

import pytest

from lifeboat import manifest_key
from lifeboat.errors import ConfigError, VerificationFailed

MANIFEST = {
    "file": "app-daily-backup-2025-01-15T14-30-00.sql.gz",
    "database": "app",
    "size": 1234,
    "sha256": "ab" * 32,
    "tables": {"public.users": 500},
    "duration_seconds": 1.234,
}
WHERE = "/store/daily/app-daily-backup-2025-01-15T14-30-00.sql.gz"


def write_keys(path, *keys: bytes, mode: int = 0o600) -> str:
    path.write_text(
        "# lifeboat manifest keys\n" + "".join(base64.b64encode(k).decode() + "\n" for k in keys)
    )
    path.chmod(mode)
    return str(path)


def test_seal_and_check_round_trip_through_json(tmp_path):
    ring = manifest_key.load(write_keys(tmp_path / "k", os.urandom(32)))
    sealed = ring.seal(MANIFEST)
    again = json.loads(json.dumps(sealed, indent=2, sort_keys=True))
    line = manifest_key.Trust(ring).check(again, WHERE)
    assert line.startswith("manifest authenticated (HMAC-SHA256, key ")


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(sha256="cd" * 32),
        lambda m: m.update(size=1),
        lambda m: m["tables"].update({"public.users": 1}),
        lambda m: m.update(extra="x"),
        lambda m: m["mac"].update(value="0" * 64),
    ],
)
def test_any_change_is_refused(tmp_path, change):
    ring = manifest_key.load(write_keys(tmp_path / "k", os.urandom(32)))
    sealed = json.loads(json.dumps(ring.seal(MANIFEST)))
    change(sealed)
    with pytest.raises(VerificationFailed, match="was changed or written with another key"):
        manifest_key.Trust(ring).check(sealed, WHERE)


def test_rotation_last_key_signs_every_key_verifies(tmp_path):
    old, new = os.urandom(32), os.urandom(32)
    before = manifest_key.load(write_keys(tmp_path / "k1", old)).seal(MANIFEST)
    ring = manifest_key.load(write_keys(tmp_path / "k2", old, new))
    after = ring.seal(MANIFEST)
    assert after["mac"]["key_id"] == manifest_key.key_id(new) != before["mac"]["key_id"]
    for sealed in (before, after):
        manifest_key.Trust(ring).check(sealed, WHERE)
    retired = manifest_key.load(write_keys(tmp_path / "k3", new))
    with pytest.raises(VerificationFailed, match="is not in"):
        manifest_key.Trust(retired).check(before, WHERE)


def test_unsigned_refused_unless_allowed_and_no_key_means_no_check(tmp_path):
    ring = manifest_key.load(write_keys(tmp_path / "k", os.urandom(32)))
    with pytest.raises(VerificationFailed, match="is not signed"):
        manifest_key.Trust(ring).check(dict(MANIFEST), WHERE)
    assert "allowed" in manifest_key.Trust(ring, allow_unsigned=True).check(dict(MANIFEST), WHERE)
    assert "not authenticated" in manifest_key.Trust(None).check(dict(MANIFEST), WHERE)


def test_a_manifest_under_another_name_is_refused(tmp_path):
    ring = manifest_key.load(write_keys(tmp_path / "k", os.urandom(32)))
    with pytest.raises(VerificationFailed, match=r"not of other\.sql\.gz"):
        manifest_key.Trust(ring).check(ring.seal(MANIFEST), "/store/daily/other.sql.gz")


@pytest.mark.parametrize("mode", [0o640, 0o660, 0o604, 0o644, 0o620])
def test_key_file_readable_by_others_is_refused(tmp_path, mode):
    path = write_keys(tmp_path / "k", os.urandom(32), mode=mode)
    with pytest.raises(ConfigError, match=f"chmod 600 {path}"):
        manifest_key.load(path)


def test_bad_key_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        manifest_key.load(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        manifest_key.load(write_keys(tmp_path / "short", b"x" * 16))
    with pytest.raises(ConfigError, match="holds no key"):
        manifest_key.load(write_keys(tmp_path / "empty"))
    target = write_keys(tmp_path / "real", os.urandom(32))
    os.symlink(target, tmp_path / "link")
    with pytest.raises(ConfigError, match="symlink"):
        manifest_key.load(str(tmp_path / "link"))
    hexed = tmp_path / "hex"
    hexed.write_text(os.urandom(32).hex() + "\n")
    hexed.chmod(0o600)
    assert len(manifest_key.load(str(hexed)).keys[0]) == 32


def test_generated_key_lines_load(tmp_path):
    path = tmp_path / "gen"
    path.write_text(manifest_key.generate() + "\n")
    path.chmod(0o600)
    assert len(manifest_key.load(str(path)).keys[0]) == 32
