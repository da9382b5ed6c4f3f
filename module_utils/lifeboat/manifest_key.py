"""Authenticated manifests: HMAC-SHA256 with a key that is not kept beside the backups.

A manifest carries the backup's size and sha256, so whoever can write to the
store can change a backup and its manifest together; a checksum alone proves
nothing against them. Sealed manifests carry

    "mac": {"alg": "HMAC-SHA256", "key_id": "<16 hex>", "value": "<64 hex>"}

computed over the manifest's canonical JSON (sorted keys, no spaces, ASCII,
without "mac") with a key from the key file (`manifest_key_file`, by default
/etc/lifeboat/manifest.key when it exists). The file is a small keyring: one
key per line (base64 or hex, at least 32 bytes; `#` comments), the last line
is the newest and signs new backups, every line verifies. Rotation: append a
new key, keep the old lines as long as their backups are kept.

The file must be owned by the running user (or root; root may use the backup
user's) and not accessible to anyone else (0600), like the secrets file: a key
others can read signs anything.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import stat
from dataclasses import dataclass

from .errors import ConfigError, VerificationFailed

ALG = "HMAC-SHA256"
DEFAULT_FILE = "/etc/lifeboat/manifest.key"
MIN_BYTES = 32


def key_id(key: bytes) -> str:
    """A public name for a key (it reveals nothing of the key)."""
    return hashlib.sha256(b"lifeboat manifest key id\0" + key).hexdigest()[:16]


def canonical(manifest: dict) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def generate() -> str:
    """A new key line (what the role writes when a host has none)."""
    return base64.b64encode(os.urandom(MIN_BYTES)).decode()


@dataclass(frozen=True)
class Keyring:
    path: str
    keys: tuple[bytes, ...]  # oldest first; the last one signs

    @property
    def ids(self) -> dict[str, bytes]:
        return {key_id(k): k for k in self.keys}

    def mac(self, manifest: dict, key: bytes) -> str:
        return hmac.new(key, canonical(manifest), hashlib.sha256).hexdigest()

    def seal(self, manifest: dict) -> dict:
        """A copy of `manifest` with the MAC of the newest key."""
        key = self.keys[-1]
        body = {k: v for k, v in manifest.items() if k != "mac"}
        return dict(body, mac={"alg": ALG, "key_id": key_id(key), "value": self.mac(body, key)})


def load(path: str) -> Keyring:
    """Read and check a key file; ConfigError says how to fix it."""
    hint = f"Run `chmod 600 {path}` as its owner (the backup user), or `chown` it to that user."
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ConfigError(
            f"Failed to read the manifest key file {path}: it does not exist.",
            "Create it (the lifeboat role does: `ansible-playbook playbooks/provision.yml`), "
            f"e.g. `umask 077; python3 -c 'import base64,os;print(base64.b64encode(os.urandom(32))"
            f".decode())' > {path}`, or unset manifest_key_file.",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"Failed to read the manifest key file {path}: {exc.strerror or exc} "
            "(a symlink is not accepted).",
            "Point manifest_key_file at a regular file owned by the backup user, mode 0600.",
        ) from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"Manifest key file {path} is not a regular file.", hint)
        if info.st_mode & 0o077:
            raise ConfigError(
                f"Manifest key file {path} is accessible to other users "
                f"(mode {info.st_mode & 0o777:04o}): whoever can read it can sign any backup.",
                hint,
            )
        if os.geteuid() != 0 and info.st_uid not in (os.geteuid(), 0):
            raise ConfigError(
                f"Manifest key file {path} is owned by uid {info.st_uid}, not by this user "
                f"(uid {os.geteuid()}) or root.",
                hint,
            )
        text = fh.read().decode("ascii", "replace")
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key = _decode(line)
        if key is None or len(key) < MIN_BYTES:
            raise ConfigError(
                f"Manifest key file {path}, line {number}: not a key of at least "
                f"{MIN_BYTES} bytes in base64 or hex.",
                "One key per line; make one with "
                "`python3 -c 'import base64,os;print(base64.b64encode(os.urandom(32)).decode())'`.",
            )
        keys.append(key)
    if not keys:
        raise ConfigError(f"Manifest key file {path} holds no key.", "Add one key per line.")
    return Keyring(path, tuple(keys))


def _decode(line: str) -> bytes | None:
    try:
        if len(line) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in line):
            return bytes.fromhex(line)
        return base64.b64decode(line, validate=True)
    except (ValueError, binascii.Error):
        return None


@dataclass(frozen=True)
class Trust:
    """What restore, verify and drills accept: the keyring (None: no key configured)
    and whether an unsigned manifest may pass when there is one."""

    keyring: Keyring | None = None
    allow_unsigned: bool = False

    def seal(self, manifest: dict) -> dict:
        return self.keyring.seal(manifest) if self.keyring else manifest

    def check(self, manifest: dict, location: str) -> str:
        """Raise VerificationFailed unless the manifest of `location` is authentic;
        returns the line for the report."""
        mac = manifest.get("mac")
        name = os.path.basename(location.rstrip("/"))
        if self.keyring is None:
            return "manifest not authenticated (no manifest_key_file configured)"
        if not mac:
            if self.allow_unsigned:
                return "manifest is not signed (allowed by allow_unsigned)"
            raise VerificationFailed(
                f"The manifest of {location} is not signed, and a manifest key is configured "
                f"({self.keyring.path}): it was written without the key, or someone removed "
                "its MAC.",
                "Do not restore from it unless you know where it came from; then pass "
                "--allow-unsigned (lifeboat_allow_unsigned / allow_unsigned: true).",
            )
        known = self.keyring.ids
        why = None
        if not isinstance(mac, dict) or mac.get("alg") != ALG:
            why = f"unknown MAC algorithm {mac.get('alg') if isinstance(mac, dict) else mac!r}"
        elif mac.get("key_id") not in known:
            why = f"key id {mac.get('key_id')!r} is not in {self.keyring.path}"
        else:
            expected = self.keyring.mac(manifest, known[mac["key_id"]])
            if not hmac.compare_digest(expected, str(mac.get("value", ""))):
                why = f"its MAC does not verify with key {mac['key_id']}"
            elif manifest.get("file") not in (None, name):
                why = f"it is the manifest of {manifest.get('file')}, not of {name}"
        if why:
            raise VerificationFailed(
                f"The manifest of {location} was changed or written with another key: {why}.",
                "Do not restore from it: the file and its manifest may both have been "
                "replaced. Find out who can write to the store, and restore another backup "
                "(`lifeboat list`); after a key rotation, keep the old key as an earlier line "
                "of the key file.",
            )
        return f"manifest authenticated (HMAC-SHA256, key {mac['key_id']})"


def trust_for(settings) -> Trust:
    """The Trust of a run's settings: manifest_key_file (or the default file when it
    exists) and allow_unsigned."""
    path = getattr(settings, "manifest_key_file", None)
    if not path and os.path.lexists(DEFAULT_FILE):
        path = DEFAULT_FILE
    keyring = load(path) if path else None
    return Trust(keyring, bool(getattr(settings, "allow_unsigned", False)))
