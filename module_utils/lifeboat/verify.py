"""Cheap integrity checks of a backup, without a database.

Reads the file once: sha256 and size against the manifest, full
decompression, the plain dump's header and completion trailer, and the row
count of every COPY block against the manifest; for custom and directory
archives `pg_restore --list` and a full read through pg_restore (every data
block decompressed, every table's rows counted). Deep checks (a restore
drill into a scratch database) live in drill.py; the drill and globals
settings are checked here.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field

from . import children, compress, dirtar, dump, encrypt, manifest_key, naming, pg, sqlguard, storefs
from . import manifest as manifests
from .conninfo import ConnInfo
from .errors import ConfigError, LifeboatError, VerificationFailed

REMEDY = "Do not restore from it: delete it and take a new backup (`lifeboat backup`)."


@dataclass
class Report:
    path: str
    ok: bool = True
    checks: list[str] = field(default_factory=list)
    manifest: dict | None = None
    rows: dict[str, int] | None = None  # exact rows per table, read from the dump itself

    def as_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "checks": self.checks}


def find_manifest(path: str) -> dict | None:
    side = path + naming.MANIFEST_SUFFIX
    if not os.path.exists(side):
        return None
    with open(side, "rb") as fh:
        return manifests.loads(fh.read(), side)


def detect(path: str) -> tuple[str, str]:
    """(format, compression) of a file without a manifest, from its bytes."""
    if os.path.isdir(path):
        return "directory", "none"
    with open(path, "rb") as fh:
        head = fh.read(32)
    if encrypt.is_age(head):
        raise VerificationFailed(
            f"{path} is encrypted with age and has no manifest.",
            f"Decrypt it first (`age -d -i KEY {path} > FILE`) and use that file, or "
            "put its .manifest.json beside it.",
        )
    compression = compress.sniff(head)
    if compression == "none" and head.startswith(dump.CUSTOM_MAGIC):
        return "custom", "none"
    return "plain", compression


def verify_file(
    path: str,
    manifest: dict | None = None,
    bin_dir: str | None = None,
    progress=None,
    identity: str | None = None,
    trust: manifest_key.Trust | None = None,
    work_dir: str | None = None,
) -> Report:
    """Check one backup file (or directory archive); raise VerificationFailed on any fault.

    An age-encrypted backup is decrypted with `identity` (an age key file) for
    the content checks; without one only its size and sha256 are checked.
    With `trust`, the manifest's MAC is checked first (manifest_key.py).
    A directory dump packed as a tar is unpacked into a temporary folder under
    `work_dir` (default: the store's `.verify`) and checked as a folder.
    """
    report = Report(path)
    if not os.path.exists(path):
        raise VerificationFailed(f"Backup {path} does not exist.", "Check the path.")
    manifest = manifest if manifest is not None else find_manifest(path)
    report.manifest = manifest
    if manifest is not None and trust is not None:
        report.checks.append(trust.check(manifest, path))
    if dirtar.is_archive(manifest) and not os.path.isdir(path):
        _verify_archive(path, manifest, bin_dir, report, identity, work_dir)
        return report
    if manifest is None:
        fmt, compression = detect(path)
        report.checks.append("no manifest: checksum and row counts not checked")
    else:
        fmt, compression = manifest["format"], manifest["compression"]
    if fmt == "directory":
        _verify_directory(path, manifest, report)
    elif encrypt.method_of(manifest) and not identity:
        _verify_checksum(path, manifest, report)
        report.checks.append("encrypted: contents not checked (no identity file)")
    else:
        _verify_stream(path, fmt, compression, manifest, report, progress, identity)
    if fmt in ("custom", "directory"):
        _pg_restore_list(path, bin_dir, report)
        _pg_restore_read(path, bin_dir, manifest, report)
    return report


def _fail(path: str, why: str) -> VerificationFailed:
    return VerificationFailed(f"Backup verification failed for {path}: {why}.", REMEDY)


def _verify_checksum(path, manifest, report) -> None:
    with open(path, "rb") as fh:
        tap = dump.HashingReader(fh)
        while tap.read(dump.CHUNK):
            pass
    _match_manifest(path, tap, manifest, report)


def _match_manifest(path, tap, manifest, report) -> None:
    if tap.size != manifest["size"]:
        raise _fail(path, f"size is {tap.size} bytes, manifest says {manifest['size']}")
    if tap.sha256.hexdigest() != manifest["sha256"]:
        raise _fail(path, "sha256 does not match the manifest")
    report.checks.append("size and sha256 match the manifest")


def _verify_stream(path, fmt, compression, manifest, report, progress, identity=None) -> None:
    codec = compression if fmt == "plain" else "none"
    watch = dump.StreamWatch(fmt, guard=True)  # plain: what psql would run (sqlguard.py)
    encrypted = encrypt.method_of(manifest) is not None
    with open(path, "rb") as fh:
        tap = dump.HashingReader(fh)
        plain = encrypt.Decryptor(tap, identity, path) if encrypted else tap
        try:
            reader = compress.decompressor(plain, codec)
            while chunk := reader.read(dump.CHUNK):
                watch.feed(chunk)
                if progress:
                    progress(watch.size, tap.size)
            watch.finish()
            if encrypted:
                plain.finish()  # age's exit code: the whole stream authenticated
        except sqlguard.Refused as exc:
            raise sqlguard.refused(path, exc) from None
        except VerificationFailed:
            if encrypted and manifest is not None:
                # A damaged file fails decryption: say so by its checksum when it differs.
                plain.close()
                while tap.read(dump.CHUNK):
                    pass
                _match_manifest(path, tap, manifest, report)
            raise
        except LifeboatError:
            raise
        except Exception as exc:  # zlib-ng/zstd raise their own types
            raise _fail(path, f"{compression} stream is corrupt or truncated ({exc})") from None
        finally:
            if encrypted:
                plain.close()
    if encrypted:
        report.checks.append("age decryption complete (identity file given)")
    if codec != "none":
        report.checks.append(f"{compression} stream complete ({watch.size} bytes uncompressed)")
    if manifest is not None:
        _match_manifest(path, tap, manifest, report)
    fault = watch.fault()
    if fault:
        raise _fail(path, fault)
    if fmt == "plain":
        report.rows = watch.rows
        report.checks.append("dump header and completion trailer present")
        report.checks.append("no psql meta-command or COPY that pg_dump does not write")
        if manifest is not None and manifest.get("rows_exact"):
            if watch.rows != manifest.get("tables"):
                raise _fail(path, "row counts in the dump differ from the manifest's")
            report.checks.append(f"row counts of {len(watch.rows)} tables match the manifest")


def _verify_directory(path, manifest, report) -> None:
    if not os.path.exists(os.path.join(path, "toc.dat")):
        raise _fail(path, "directory archive has no toc.dat")
    if manifest is not None:
        sha, size, _ = dump.tree_digest(path)
        # A tar backup's sha256 and size are the tar's; its files have their own digest.
        packed = dirtar.is_archive(manifest)
        expected = manifest.get("directory_sha256") if packed else manifest["sha256"]
        expected_size = manifest.get("uncompressed_size") if packed else manifest["size"]
        if sha != expected or size != expected_size:
            raise _fail(path, "directory contents do not match the manifest's sha256")
        report.checks.append("directory contents match the manifest's sha256")


def _verify_archive(path, manifest, bin_dir, report, identity, work_dir) -> None:
    """A directory dump as one tar: unpacked (size, sha256, members, age checked as it
    streams) into a temporary folder, which is then checked like any directory dump."""
    if encrypt.method_of(manifest) and not identity:
        _verify_checksum(path, manifest, report)
        report.checks.append("encrypted: contents not checked (no identity file)")
        return
    folder = tempfile.mkdtemp(prefix="unpack-", dir=_work_dir(path, work_dir))
    try:
        with open(path, "rb") as fh:
            names = dirtar.unpack(fh, manifest, path, folder, identity)
        report.checks.append(
            f"tar: size and sha256 match the manifest; {len(names)} plain files as pg_dump "
            "names them"
        )
        if encrypt.method_of(manifest):
            report.checks.append("age decryption complete (identity file given)")
        _verify_directory(folder, manifest, report)
        _pg_restore_list(folder, bin_dir, report)
        _pg_restore_read(folder, bin_dir, manifest, report)
    finally:
        dirtar.remove(folder)


def _work_dir(path: str, work_dir: str | None) -> str:
    """Where a tar is unpacked for checking: the store's `.verify` for a backup in a store."""
    if work_dir:
        return work_dir
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder) not in naming.BACKUP_TYPES:
        return folder
    work = os.path.join(os.path.dirname(folder), ".verify")
    storefs.ensure_dir(work, "verify work directory")
    return work


def _pg_restore_list(path, bin_dir, report) -> None:
    pg_restore = pg.find_tool("pg_restore", bin_dir)
    proc = subprocess.run(
        [pg_restore, "--list", path],
        capture_output=True,
        text=True,
        check=False,
        env=children.environment(),
    )
    if proc.returncode != 0:
        raise _fail(path, f"pg_restore --list failed: {proc.stderr.strip()}")
    entries = sum(1 for line in proc.stdout.splitlines() if line and not line.startswith(";"))
    report.checks.append(f"pg_restore --list reads {entries} entries")


def _pg_restore_read(path, bin_dir, manifest, report) -> None:
    """Read the whole archive as a restore would: every data block decompressed.

    `pg_restore --list` reads only the table of contents; a flipped byte in a
    table's data shows only when that block is decompressed. The SQL script
    pg_restore writes goes through the same watcher as a plain dump: header,
    completion trailer, and the exact rows of every table's COPY block.
    """
    pg_restore = pg.find_tool("pg_restore", bin_dir)
    watch = dump.StreamWatch("plain")
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(
            [pg_restore, "--file=-", path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errfile,
            env=children.environment(),
        )
        try:
            while chunk := proc.stdout.read(dump.CHUNK):
                watch.feed(chunk)
            returncode = proc.wait()
        finally:
            proc.stdout.close()
            dump._kill(proc)
        errfile.seek(0)
        stderr = " ".join(errfile.read().decode("utf-8", "replace").split())
    if returncode != 0:
        raise _fail(path, f"pg_restore cannot read the whole archive: {stderr[-500:]}")
    fault = watch.fault()
    if fault:
        raise _fail(path, f"read through pg_restore, {fault}")
    report.rows = watch.rows
    if manifest is not None and manifest.get("rows_exact"):
        if report.rows != manifest.get("tables"):
            raise _fail(path, "row counts in the dump differ from the manifest's")
        report.checks.append(f"row counts of {len(report.rows)} tables match the manifest")
    report.checks.append(
        f"pg_restore read every data block: {len(report.rows)} tables, "
        f"{sum(report.rows.values())} rows"
    )


# --------------------------------------------------------------------------- drill settings


def _flag(value, key: str) -> bool:
    """A boolean setting that may come from the environment as a string."""
    if isinstance(value, bool):
        return value
    text = str(value or "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"Setting {key} must be true or false, got {value!r}.", "Use true or false.")


def _queries(value) -> dict[str, tuple[str, ...]]:
    """verify_queries: a list for every database, or {database: [sql, ...]}."""
    hint = (
        "Give a list of SQL returning true (e.g. ['SELECT count(*) > 0 FROM users']), "
        "or a mapping of database name to such a list."
    )
    if not value:
        return {}
    if isinstance(value, str):
        value = [value]
    per = {"*": value} if isinstance(value, (list, tuple)) else value
    if not isinstance(per, dict):
        raise ConfigError(f"Setting verify_queries has the wrong shape: {value!r}.", hint)
    checked = {}
    for label, items in per.items():
        items = [items] if isinstance(items, str) else items
        if not isinstance(items, (list, tuple)) or not all(
            isinstance(q, str) and q.strip() for q in items
        ):
            raise ConfigError(f"verify_queries for {label!r} must be a list of SQL strings.", hint)
        checked[str(label)] = tuple(q.strip() for q in items)
    return checked


def check_config(merged: dict) -> dict:
    """Validate the drill and globals settings; returns Settings fields."""
    server = merged.get("drill_server") or None
    if server:
        ConnInfo.parse(server)  # fails early, with the connection forms in the hint
    return {
        "verify_queries": _queries(merged.get("verify_queries")),
        "drill_server": server,
        "globals": _flag(merged.get("globals"), "globals"),
        "globals_passwords": _flag(merged.get("globals_passwords"), "globals_passwords"),
    }
