"""A directory-format dump as one POSIX tar stream, and back.

`pg_dump -Fd -j N` writes a folder of files; S3 and age take one stream. The
folder goes into a pax tar (`tarfile` in stream mode, `w|`), in name order,
each member a plain 0600 file: `tar -x -C DIR` and `pg_restore -j N DIR`
restore it without lifeboat. The tar is written once pg_dump has exited: its
table of contents (toc.dat) is written before the data and the dump is
complete only when pg_dump exits 0, so nothing earlier proves a file final.

Reading back, every member is checked before one byte of it is written: a
plain file whose name pg_dump could have written (`toc.dat`, `1234.dat.gz`,
`blob_5.dat`, `blobs.toc`), nothing else: no path, no `..`, no link, no
device, no duplicate (tarfile's `data_filter` as well). Files go into a new
folder under the store's work space only, opened without following links.
The sha256 of the whole stream is compared with the manifest at its end,
before anything reads the folder: a restore never starts from a changed tar.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tarfile

from . import dump, encrypt, storefs
from .errors import DiskFull, StorageError, VerificationFailed

CHUNK = dump.CHUNK
CONTAINER = "tar"  # the manifest's `container` for such a backup
MEMBER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.]{0,99}$")  # what pg_dump names its files
_REMEDY = (
    "Nothing was restored and the database is untouched. Use another backup "
    "(`lifeboat list`); if this one came from S3, check who can write to the bucket."
)


def is_archive(manifest: dict | None) -> bool:
    return (manifest or {}).get("container") == CONTAINER


def write(directory: str, sink, recipients=()) -> tuple[dump.DumpResult, dump.HashingWriter]:
    """Stream `directory` as a tar [through age] into `sink`, hashing what `sink` gets.

    Returns the tree digest of the files (dump.tree_digest's, computed while
    they are read) as a DumpResult (`sha256`, `uncompressed_size`, `files`),
    and the writer that counted and hashed the object.
    """
    hasher = dump.HashingWriter(sink)
    encryptor = encrypt.Encryptor(hasher, recipients) if recipients else None
    tree = hashlib.sha256()
    result = dump.DumpResult()
    try:
        with tarfile.open(
            fileobj=encryptor or hasher,
            mode="w|",
            format=tarfile.PAX_FORMAT,
            bufsize=CHUNK,
            copybufsize=CHUNK,
        ) as tar:
            for name in sorted(os.listdir(directory)):
                if not MEMBER.match(name):
                    raise StorageError(
                        f"Failed to archive {directory}: {name!r} is not a file pg_dump writes.",
                        "Nothing was kept. Run the backup again.",
                    )
                fd = storefs.open_file(os.path.join(directory, name), os.O_RDONLY, "dump file")
                with os.fdopen(fd, "rb") as fh:
                    info = tarfile.TarInfo(name)
                    info.size = os.fstat(fd).st_size
                    info.mtime = int(os.fstat(fd).st_mtime)
                    info.mode = 0o600
                    tap = dump.HashingReader(fh)
                    tar.addfile(info, tap)
                    if tap.read(1):
                        raise StorageError(
                            f"Failed to archive {directory}: {name} grew while it was read.",
                            "Nothing was kept. Run the backup again.",
                        )
                tree.update(f"{name}\0{tap.sha256.hexdigest()}\n".encode())
                result.uncompressed_size += info.size
                result.files.append(name)
        if encryptor:
            encryptor.close()
            encryptor = None
    except BaseException:
        if encryptor:
            encryptor.abort()
        raise
    result.sha256 = tree.hexdigest()
    return result, hasher


def check_member(member: tarfile.TarInfo, dest: str, seen: set, location: str) -> str:
    """The member's file name, or VerificationFailed: only pg_dump's plain files pass."""
    why = ""
    try:
        tarfile.data_filter(member, dest)  # absolute paths, `..`, links, devices
    except tarfile.FilterError as exc:
        why = str(exc)
    if not why and not member.isreg():
        why = "it is not a regular file"
    if not why and (not MEMBER.match(member.name) or member.name in (".", "..")):
        why = "it is not a file name pg_dump writes (a path, or unexpected characters)"
    if not why and member.name in seen:
        why = "it appears twice"
    if why:
        raise VerificationFailed(
            f"Failed to unpack {location}: the tar member {member.name!r} is refused: {why}.",
            _REMEDY,
        )
    seen.add(member.name)
    return member.name


def unpack(
    source,
    manifest: dict,
    location: str,
    dest: str | None,
    identity: str | None = None,
) -> list[str]:
    """Read the tar object from `source` [through age] into the empty folder `dest`.

    `dest` None only checks (nothing is written). The whole stream's size and
    sha256 must match the manifest, age must authenticate it to its end, and
    toc.dat must be there; else VerificationFailed (and `dest` is removed).
    Returns the member names.
    """
    tap = dump.HashingReader(source)
    encrypted = encrypt.method_of(manifest) is not None
    if encrypted and not identity:
        raise VerificationFailed(
            f"Failed to unpack {location}: it is encrypted and no identity file is configured.",
            "Set lifeboat_encrypt_identity_file to the age key file.",
        )
    plain = encrypt.Decryptor(tap, identity, location) if encrypted else tap
    names: list[str] = []
    try:
        try:
            with tarfile.open(fileobj=plain, mode="r|", bufsize=CHUNK) as tar:
                for member in tar:
                    name = check_member(member, dest or "/nonexistent", set(names), location)
                    names.append(name)
                    _extract(tar, member, dest)
            while plain.read(CHUNK):  # tar's padding; age checks the stream's end here
                pass
        except (VerificationFailed, tarfile.TarError) as exc:
            if encrypted:
                plain.close()  # its feeder stops reading `tap` before we drain it
            _match(tap, manifest, location, drain=True)  # a changed object: said first
            if isinstance(exc, VerificationFailed):
                raise
            raise VerificationFailed(
                f"Failed to unpack {location}: it is not a complete tar ({exc}).", _REMEDY
            ) from None
        finally:
            if encrypted:
                plain.close()
        _match(tap, manifest, location)
        if "toc.dat" not in names:
            raise VerificationFailed(
                f"Failed to unpack {location}: the tar holds no toc.dat (not a directory dump).",
                _REMEDY,
            )
    except OSError as exc:
        remove(dest)
        if exc.errno == 28:
            raise DiskFull(
                f"Failed to unpack {location}: disk full (No space left on device).",
                "Free space in the backup directory (the dump is unpacked there), then "
                "run it again. Nothing was restored.",
            ) from None
        raise StorageError(
            f"Failed to unpack {location}: {exc.strerror or exc}.",
            "Check the backup directory is writable, then run it again. Nothing was restored.",
        ) from None
    except BaseException:
        remove(dest)
        raise
    return names


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str | None) -> None:
    data = tar.extractfile(member)
    if dest is None:
        while data.read(CHUNK):
            pass
        return
    path = os.path.join(dest, member.name)
    fd = storefs.open_file(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, "unpacked dump file")
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(data, out, CHUNK)


def _match(tap: dump.HashingReader, manifest: dict, location: str, drain: bool = False) -> None:
    if drain:  # after a failure: is the object what the manifest says?
        with contextlib.suppress(Exception):
            while tap.read(CHUNK):
                pass
    size, sha = tap.size, tap.sha256.hexdigest()
    if size != manifest["size"] or sha != manifest["sha256"]:
        raise VerificationFailed(
            f"Failed to unpack {location}: it does not match its manifest ({size} bytes, "
            f"manifest says {manifest['size']}; sha256 "
            f"{'matches' if sha == manifest['sha256'] else 'differs'}).",
            _REMEDY,
        )


def remove(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)
