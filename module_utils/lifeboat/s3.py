"""Off-site copies in S3 (or an S3-compatible endpoint): the `S3Store`.

Layout mirrors the local store: `s3://BUCKET/<prefix>/<type>/<name>` with
`<name>.manifest.json` beside it. The same contract holds: a backup is
visible only when complete. The data object is a multipart upload (invisible
until completed), and its manifest is uploaded last, so an interrupted or
failed upload is never listed as a backup.

The upload is fed by the dump pipeline itself (`Tee`): the compressed bytes
that go to the local `.partial` file also fill S3 parts, so the file is never
read twice. The total size is unknown up front, so parts start at
`part_size` and double every 1,000 parts: 8 MiB parts reach 8 TiB within
10,000 parts, beyond S3's 5 TiB object limit.

boto3 is imported only when a bucket is configured. Credentials come from
the standard AWS chain (environment, profile, instance role); lifeboat never
takes them as settings, so they cannot reach argv, logs or manifests.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import time
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor

from . import __version__, manifest_key, naming, storefs
from . import manifest as manifests
from .errors import ConfigError, RestoreRefused, StorageError, UploadFailed, VerificationFailed
from .store import FILE_MODE, Entry

log = logging.getLogger("lifeboat")

MIB = 1 << 20
PART_MIN = 5 * MIB  # S3's floor for every part but the last
PART_MAX = 5 * 1024 * MIB
MAX_PARTS = 10_000
GROW_EVERY = 1_000
SSE_CHOICES = ("AES256", "aws:kms")
_IAM_HINT = (
    "Check the AWS credentials (environment, ~/.aws or instance role) and that "
    "their IAM policy allows it (see docs/s3.md)."
)
_TRANSIENT = {
    "RequestTimeout",
    "RequestTimeoutException",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}


def part_size(number: int, base: int) -> int:
    """Size of part `number` (1-based): `base`, doubled every 1,000 parts, capped at 5 GiB."""
    return min(base << ((number - 1) // GROW_EVERY), PART_MAX)


def capacity(base: int) -> int:
    """The largest object that fits in 10,000 parts of `part_size`."""
    return sum(part_size(n, base) for n in range(1, MAX_PARTS + 1))


def import_boto3():
    try:
        import boto3  # optional: only S3 users need it
        import botocore.config
    except ImportError:
        raise ConfigError(
            "S3 is configured (lifeboat_s3_bucket) but the boto3 package is not installed.",
            "Install it (`pip install boto3`, pinned in requirements/runtime.txt; the lifeboat "
            "role installs it) or unset lifeboat_s3_bucket / BACKUP_S3_BUCKET.",
        ) from None
    import boto3
    import botocore.config

    return boto3, botocore.config


def describe_error(exc: BaseException, bucket: str = "BUCKET") -> tuple[str, str]:
    """(cause, hint) for a boto3/botocore exception, naming no secret."""
    name = type(exc).__name__
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    code = str(error.get("Code", ""))
    message = str(error.get("Message", "")).rstrip(".")
    if code in ("NoSuchBucket",):
        return (
            "the bucket does not exist (NoSuchBucket)",
            f"Create it (`aws s3 mb s3://{bucket}`) or fix lifeboat_s3_bucket / BACKUP_S3_BUCKET.",
        )
    if code in (
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    ):
        return (
            f"S3 refused the credentials ({code})",
            "Check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance "
            "role; test with `aws s3 ls s3://BUCKET/`.",
        )
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
        return (f"access denied ({code})", _IAM_HINT)
    if code:
        return (
            f"{code}: {message}" if message else code,
            "Check the bucket, the endpoint and the credentials' permissions, then run "
            "the backup again.",
        )
    if name == "NoCredentialsError" or name == "PartialCredentialsError":
        return (
            "no AWS credentials found",
            "Set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or give the "
            "host an instance role.",
        )
    if name in (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ProxyConnectionError",
    ):
        parts = urllib.parse.urlsplit(str(getattr(exc, "kwargs", {}).get("endpoint_url") or ""))
        endpoint = f"{parts.scheme}://{parts.netloc}" if parts.netloc else ""
        return (
            f"cannot reach the S3 endpoint {endpoint} ({name})".replace("  ", " "),
            # Said of backups and restores alike: no claim about a local copy here.
            "Check lifeboat_s3_endpoint_url / AWS_ENDPOINT_URL, the network and that the "
            "service is up.",
        )
    return (f"{name}: {exc}", "Check the S3 endpoint and credentials, then run it again.")


def _is_transient(exc: BaseException) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    if code:
        return code in _TRANSIENT
    return type(exc).__module__.startswith(("botocore", "urllib3")) and type(exc).__name__ not in (
        "NoCredentialsError",
        "PartialCredentialsError",
        "ParamValidationError",
    )


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, key) of `s3://BUCKET/KEY`."""
    parsed = urllib.parse.urlsplit(url or "")
    key = parsed.path.lstrip("/")
    if parsed.scheme != "s3" or not parsed.netloc or not key:
        raise ConfigError(
            f"{url!r} is not an S3 URL.",
            "Use s3://BUCKET/<prefix>/<type>/<backup file name>, as `lifeboat list` prints it.",
        )
    return parsed.netloc, key


class S3Store:
    """Backups under `s3://bucket/prefix/`; same Entry/list/delete contract as LocalStore."""

    kind = "s3"

    def __init__(
        self,
        bucket: str,
        prefix: str = "backups",
        endpoint_url: str | None = None,
        region: str | None = None,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        part_size: int = 8 * MIB,
        max_attempts: int = 5,
        concurrency: int = 2,
    ):
        self.bucket = bucket
        self.prefix = (prefix or "").strip("/")
        self.endpoint_url = endpoint_url or None
        self.region = region or None
        self.sse = sse or None
        self.sse_kms_key_id = sse_kms_key_id or None
        self.part_size = part_size
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        self._client = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings) -> S3Store | None:
        if not getattr(settings, "s3_bucket", None):
            return None
        return cls(
            settings.s3_bucket,
            settings.s3_prefix,
            settings.s3_endpoint_url,
            settings.s3_region,
            settings.s3_sse,
            settings.s3_sse_kms_key_id,
            settings.s3_part_size_mb * MIB,
            settings.s3_max_attempts,
        )

    # -- plumbing -------------------------------------------------------------------------

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                boto3, config = import_boto3()
                session = boto3.session.Session()
                self._client = session.client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name=self.region,
                    config=config.Config(
                        retries={"mode": "adaptive", "total_max_attempts": self.max_attempts},
                        connect_timeout=10,
                        read_timeout=60,
                        max_pool_connections=self.concurrency + 4,
                        user_agent_extra=f"lifeboat/{__version__}",
                    ),
                )
            return self._client

    def key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def url(self, path: str) -> str:
        return f"s3://{self.bucket}/{self.key(path)}"

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def error(
        self, action: str, target: str, exc: BaseException, kind: type[StorageError] = StorageError
    ) -> StorageError:
        cause, hint = describe_error(exc, self.bucket)
        return kind(f"Failed to {action} {target} in S3: {cause.rstrip('.')}.", hint)

    def sse_args(self) -> dict:
        args = {}
        if self.sse:
            args["ServerSideEncryption"] = self.sse
            if self.sse == "aws:kms" and self.sse_kms_key_id:
                args["SSEKMSKeyId"] = self.sse_kms_key_id
        return args

    def encryption(self) -> dict | None:
        """What the manifest records about encryption at rest in S3."""
        if not self.sse:
            return None
        found = {"sse": self.sse}
        if self.sse_kms_key_id:
            found["sse_kms_key_id"] = self.sse_kms_key_id
        return found

    # -- the store contract ---------------------------------------------------------------

    def list(self) -> list[Entry]:
        """Every backup lifeboat named under the prefix; raises when it cannot look."""
        base = self.key("")
        sizes: dict[str, int] = {}
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    sizes[obj["Key"][len(base) :]] = obj["Size"]
        except Exception as exc:
            if isinstance(exc, ConfigError):
                raise
            raise self.error("list backups in", self.describe(), exc) from None
        entries = []
        for rel, size in sizes.items():
            folder, _, name = rel.partition("/")
            parsed = naming.parse(name)
            if parsed is None or parsed.type != folder or "/" in name:
                continue
            entries.append(
                Entry(
                    store=self.kind,
                    path=parsed.path,
                    name=parsed,
                    size=size,
                    complete=rel + naming.MANIFEST_SUFFIX in sizes,
                    location=self.url(parsed.path),
                )
            )
        return sorted(entries, key=lambda e: e.name)

    def read_manifest(self, entry: Entry) -> dict:
        url = entry.location + naming.MANIFEST_SUFFIX
        try:
            body = self.client.get_object(
                Bucket=self.bucket, Key=self.key(entry.path) + naming.MANIFEST_SUFFIX
            )
            data = body["Body"].read()
        except Exception as exc:
            raise self.error("read manifest", url, exc) from None
        return manifests.loads(data, url)

    def open(self, entry: Entry) -> Reader:
        """A streaming reader (`.read(n)`, a context manager) of the backup object."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(entry.path))["Body"]
        except Exception as exc:
            raise self.error("download", entry.location, exc) from None
        return Reader(self, entry, body)

    def delete(self, entry: Entry) -> None:
        # Manifest first: a half-deleted backup must not look complete.
        for key in (self.key(entry.path) + naming.MANIFEST_SUFFIX, self.key(entry.path)):
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except Exception as exc:
                raise self.error("delete", f"s3://{self.bucket}/{key}", exc) from None

    def entry(self, path: str) -> Entry:
        """The Entry for `<type>/<name>`, asking S3 whether the object and manifest exist."""
        folder, _, name = path.partition("/")
        parsed = naming.parse(name)
        if parsed is None or parsed.type != folder:
            raise ConfigError(
                f"{self.url(path)} is not a lifeboat backup name.",
                "Use a URL that `lifeboat list` prints.",
            )
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(path))
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise StorageError(
                    f"Backup {self.url(path)} does not exist.",
                    "List the bucket's backups with `lifeboat list`.",
                ) from None
            raise self.error("look up", self.url(path), exc) from None
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(path) + naming.MANIFEST_SUFFIX)
            complete = True
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchKey", "NotFound"):
                raise self.error("look up", self.url(path) + naming.MANIFEST_SUFFIX, exc) from None
            complete = False
        return Entry(
            store=self.kind,
            path=parsed.path,
            name=parsed,
            size=head["ContentLength"],
            complete=complete,
            location=self.url(path),
        )

    def download(self, entry: Entry, dest: str, manifest: dict | None = None) -> dict:
        """Stream the object into `dest` (0600, via `.partial`) and check size and sha256.

        Returns the manifest. Raises before `dest` exists when anything is off, so a
        restore never starts from a bad copy. A stock dump (`stock_entry`) has no
        manifest: only its size is checked here, and None returned; the caller
        verifies its content fully before anything is touched.
        """
        if entry.name is None:
            manifest = None
        elif not entry.complete:
            raise VerificationFailed(
                f"{entry.location} has no manifest: it is not a complete backup.",
                "Restore another backup (`lifeboat list`).",
            )
        else:
            manifest = manifest if manifest is not None else self.read_manifest(entry)
        packed = (manifest or {}).get("container") == "tar"  # one tar of the folder: dirtar.py
        if manifest is not None and manifest.get("format") == "directory" and not packed:
            raise ConfigError(
                f"{entry.location} is a directory archive.",
                "Directory-format backups are never uploaded to S3.",
            )
        partial = dest + naming.PARTIAL_SUFFIX
        digest, size = hashlib.sha256(), 0
        body = self.open(entry)
        try:
            fd = storefs.create_exclusive(partial, "download", FILE_MODE)
            with os.fdopen(fd, "wb") as fh:
                while chunk := body.read(MIB):
                    digest.update(chunk)
                    size += len(chunk)
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if manifest is None and size != entry.size:
                raise VerificationFailed(
                    f"Download of {entry.location} is {size} bytes; S3 says {entry.size}.",
                    "Nothing was restored. Try again.",
                )
            if manifest is not None and (
                size != manifest["size"] or digest.hexdigest() != manifest["sha256"]
            ):
                raise VerificationFailed(
                    f"Download of {entry.location} does not match its manifest "
                    f"({size} bytes, manifest says {manifest['size']}; sha256 "
                    f"{'matches' if digest.hexdigest() == manifest['sha256'] else 'differs'}).",
                    "Nothing was restored. Try again; if it persists, restore another backup.",
                )
            os.replace(partial, dest)
        except OSError as exc:
            _unlink(partial)
            raise StorageError(
                f"Failed to save the download of {entry.location} to {dest}: "
                f"{exc.strerror or exc}.",
                "Free space in the backup directory and try again.",
            ) from None
        except Exception as exc:
            _unlink(partial)
            if isinstance(exc, (VerificationFailed, StorageError, ConfigError)):
                raise
            raise self.error("download", entry.location, exc) from None
        finally:
            body.close()
        return manifest

    def begin(self, bname: naming.BackupName) -> MultipartUpload:
        return MultipartUpload(self, bname)

    def abort_stale(self, label: str, keep: str | None = None) -> list[str]:
        """Abort multipart uploads a crashed run left for `label` (call with its lock held).

        `keep` is the upload id of the run in progress.
        """
        aborted = []
        try:
            response = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.key(""))
            for upload in response.get("Uploads", []):
                parsed = naming.parse(upload["Key"].rsplit("/", 1)[-1])
                if parsed and parsed.label == label and upload["UploadId"] != keep:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted.append(f"s3://{self.bucket}/{upload['Key']}")
        except Exception as exc:  # housekeeping: never fails a backup
            log.warning("could not clean up unfinished S3 uploads: %s", describe_error(exc)[0])
        return aborted


class Reader(io.RawIOBase):
    """An S3 object body as a read-only stream whose failures are StorageErrors."""

    def __init__(self, store: S3Store, entry: Entry, body):
        super().__init__()
        self.store, self.entry, self.body = store, entry, body

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            return self.body.read(None if size is None or size < 0 else size)
        except Exception as exc:
            raise self.store.error("download", self.entry.location, exc) from None

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.body.close()
        super().close()


def store_for_url(settings, url: str) -> tuple[S3Store, str]:
    """The store holding `s3://BUCKET/<prefix>/<type>/<name>` and the `<type>/<name>` path.

    Bucket and prefix come from the URL; endpoint, region and retries from `settings`.
    """
    bucket, key = parse_url(url)
    parts = key.split("/")
    if len(parts) < 2 or naming.parse(parts[-1]) is None:
        raise ConfigError(
            f"{url} does not name a lifeboat backup.",
            "Use s3://BUCKET/<prefix>/<type>/<backup file name>, as `lifeboat list` prints it.",
        )
    store = S3Store(
        bucket,
        "/".join(parts[:-2]),
        getattr(settings, "s3_endpoint_url", None),
        getattr(settings, "s3_region", None),
        part_size=getattr(settings, "s3_part_size_mb", 8) * MIB,
        max_attempts=getattr(settings, "s3_max_attempts", 5),
    )
    return store, "/".join(parts[-2:])


def names_backup(url: str) -> bool:
    """The URL's key ends in a name lifeboat gives its backups (`<type>/<name>`)."""
    parts = parse_url(url)[1].split("/")
    return len(parts) >= 2 and naming.parse(parts[-1]) is not None


def stock_entry(settings, url: str):
    """(store, entry, upload time) of an object lifeboat did not name: a stock dump.

    The guide uploaded `pg_dump | gzip` output under keys of its own choosing
    (s3://my-bucket/backups/daily/backup.sql.gz). Its entry has no BackupName
    (`name` None) and no manifest: a restore downloads it, finds its format from
    its bytes and verifies it fully, as for a stock file given with --file.
    """
    bucket, key = parse_url(url)
    prefix, _, name = key.rpartition("/")
    if name.endswith((naming.MANIFEST_SUFFIX, naming.PARTIAL_SUFFIX)):
        raise RestoreRefused(
            f"{url} is not a dump file.", "Use the URL of the .sql, .sql.gz or custom dump itself."
        )
    store = S3Store(
        bucket,
        prefix,
        getattr(settings, "s3_endpoint_url", None),
        getattr(settings, "s3_region", None),
        part_size=getattr(settings, "s3_part_size_mb", 8) * MIB,
        max_attempts=getattr(settings, "s3_max_attempts", 5),
    )
    try:
        head = store.client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            raise StorageError(
                f"{url} does not exist.", f"Check the key (`aws s3 ls s3://{bucket}/{prefix}/`)."
            ) from None
        raise store.error("look up", url, exc) from None
    entry = Entry(
        store=store.kind,
        path=name,
        name=None,
        size=head["ContentLength"],
        complete=False,
        location=url,
    )
    return store, entry, head.get("LastModified")


def entry_for_url(settings, url: str) -> tuple[S3Store, Entry]:
    """Restore's hook: the store and a complete entry for an s3:// URL; refuses anything else."""
    store, path = store_for_url(settings, url)
    entry = store.entry(path)
    if not entry.complete:
        raise RestoreRefused(
            f"{url} has no manifest: the upload was interrupted or failed.",
            "Restore a complete backup instead (`lifeboat list` shows them).",
        )
    return store, entry


def verify_url(settings, url: str, bin_dir: str | None = None):
    """`lifeboat verify s3://...`: download into the backup dir, check it all, remove it."""
    from . import verify  # verify pulls in the codecs; only needed here

    stock = not names_backup(url)  # no manifest: its content is verified fully
    store, entry = stock_entry(settings, url)[:2] if stock else entry_for_url(settings, url)
    work = os.path.join(settings.backup_dir, ".verify")
    os.makedirs(settings.backup_dir, mode=0o700, exist_ok=True)
    storefs.ensure_dir(work, "verify work directory")
    local = os.path.join(work, entry.path if stock else entry.name.name)
    try:
        manifest = store.download(entry, local)  # size and sha256 against the manifest
        # Its MAC, named by the URL, before any content check (manifest_key.py).
        trusted = manifest_key.trust_for(settings).check(manifest, url) if manifest else None
        identity = getattr(settings, "encrypt_identity_file", None)
        report = verify.verify_file(local, manifest, bin_dir, identity=identity)
    finally:
        _unlink(local)
    report.path = url
    if trusted:
        report.checks.insert(0, trusted)
    report.checks.insert(
        0,
        "downloaded (a stock dump: no manifest)"
        if stock
        else "downloaded; size and sha256 match the S3 manifest",
    )
    return report


class MultipartUpload:
    """One backup streaming into S3 as it is dumped; `commit` publishes it.

    `write` never raises: an S3 failure is recorded in `error` and the bytes
    are dropped, so the local copy (fed by the same pipeline) still completes.
    Memory: at most `concurrency + 1` parts.
    """

    def __init__(self, store: S3Store, bname: naming.BackupName):
        self.store = store
        self.bname = bname
        self.key = store.key(bname.path)
        self.location = store.url(bname.path)
        self.error: StorageError | None = None
        self.upload_id: str | None = None
        self._buffer = bytearray()
        self._number = 0
        self._parts: dict[int, Future] = {}
        self._slots = threading.BoundedSemaphore(store.concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self.size = 0

    def start(self) -> None:
        """Open the multipart upload; failures are recorded, not raised."""
        try:
            response = self.store.client.create_multipart_upload(
                Bucket=self.store.bucket,
                Key=self.key,
                ChecksumAlgorithm="SHA256",
                ContentType="application/octet-stream",
                **self.store.sse_args(),
            )
            self.upload_id = response["UploadId"]
            self._pool = ThreadPoolExecutor(
                self.store.concurrency, thread_name_prefix="lifeboat-s3"
            )
        except ConfigError as exc:
            self._fail(UploadFailed(exc.message, exc.hint))
        except Exception as exc:
            self._fail(self.store.error("upload", self.location, exc, UploadFailed))

    def _fail(self, error: StorageError) -> None:
        if self.error is None:
            self.error = error
            log.error("S3 upload failed, keeping the local copy only: %s", error)
        self._buffer = bytearray()

    def write(self, data) -> int:
        if self.error is None:
            self._buffer += data
            self.size += len(data)
            while self.error is None and len(self._buffer) >= part_size(
                self._number + 1, self.store.part_size
            ):
                self._submit(part_size(self._number + 1, self.store.part_size))
        return len(data)

    def flush(self) -> None:
        pass

    def _submit(self, size: int) -> None:
        self._check_done()
        if self.error is not None:
            return
        body = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._number += 1
        if self._number > MAX_PARTS:
            self._fail(
                UploadFailed(
                    f"Failed to upload {self.location} to S3: more than {MAX_PARTS} parts.",
                    "Raise lifeboat_s3_part_size_mb.",
                )
            )
            return
        self._slots.acquire()  # back-pressure: the dump waits for a free upload slot
        future = self._pool.submit(self._upload_part, self._number, body)
        future.add_done_callback(lambda _: self._slots.release())
        self._parts[self._number] = future

    def _check_done(self) -> None:
        for future in self._parts.values():
            if future.done() and future.exception() is not None:
                exc = future.exception()
                self._fail(
                    exc
                    if isinstance(exc, StorageError)
                    else self.store.error("upload", self.location, exc, UploadFailed)
                )
                return

    def _upload_part(self, number: int, body: bytes) -> dict:
        # botocore retries each request; one more round here covers resets mid-body.
        attempts = 2 if self.store.max_attempts > 1 else 1
        for attempt in range(1, attempts + 1):
            if self.error is not None:
                raise self.error
            try:
                response = self.store.client.upload_part(
                    Bucket=self.store.bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    PartNumber=number,
                    Body=body,
                    ChecksumAlgorithm="SHA256",
                )
                return {
                    "PartNumber": number,
                    "ETag": response["ETag"],
                    "ChecksumSHA256": response.get("ChecksumSHA256"),
                }
            except Exception as exc:
                if attempt == attempts or not _is_transient(exc):
                    raise self.store.error(
                        f"upload part {number} of", self.location, exc, UploadFailed
                    ) from None
                log.warning("S3 part %d failed (%s); retrying", number, describe_error(exc)[0])
                time.sleep(1.0 * attempt)
        raise AssertionError("unreachable")

    def commit(self, manifest: dict) -> None:
        """Finish the upload, check it, then upload the manifest; raises UploadFailed."""
        if self.error is None and (self._buffer or self._number == 0):
            self._submit(len(self._buffer))
        parts = []
        for number in sorted(self._parts):
            try:
                parts.append(self._parts[number].result())
            except StorageError as exc:
                self._fail(exc)
            except Exception as exc:
                self._fail(self.store.error("upload", self.location, exc, UploadFailed))
        if self.error is not None:
            self.abort()
            raise self.error
        client = self.store.client
        try:
            parts = [{k: v for k, v in p.items() if v} for p in parts]
            client.complete_multipart_upload(
                Bucket=self.store.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": parts},
            )
            self.upload_id = None
            size = client.head_object(Bucket=self.store.bucket, Key=self.key)["ContentLength"]
            if size != manifest["size"]:
                raise UploadFailed(
                    f"Failed to upload {self.location} to S3: it holds {size} "
                    f"bytes, the backup has {manifest['size']}.",
                    "Run the backup again.",
                )
            client.put_object(
                Bucket=self.store.bucket,
                Key=self.key + naming.MANIFEST_SUFFIX,
                Body=manifests.dumps(manifest),
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
                **self.store.sse_args(),
            )
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, UploadFailed)
                else self.store.error("upload", self.location, exc, UploadFailed)
            )
            self._fail(error)
            self._remove_object()
            raise error from None
        finally:
            self._shutdown()

    def _remove_object(self) -> None:
        # Without its manifest it is not a backup; do not leave it behind either.
        with contextlib.suppress(Exception):  # best effort: it is never listed as a backup
            self.store.client.delete_object(Bucket=self.store.bucket, Key=self.key)

    def abort(self) -> None:
        """Drop the upload (nothing becomes visible); never raises."""
        if self.error is None:
            self.error = UploadFailed(f"Upload of {self.location} was abandoned.", "")
        for future in self._parts.values():
            future.cancel()
        self._shutdown()
        if self.upload_id:
            try:
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id
                )
                self.upload_id = None
            except Exception as exc:
                # Parts of an unfinished upload are invisible; the next run's cleanup
                # (or a bucket lifecycle rule) removes them.
                log.warning(
                    "could not abort the S3 upload of %s: %s", self.location, describe_error(exc)[0]
                )

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class Tee:
    """A sink that writes to the local file and an S3 upload; only the local file may raise."""

    def __init__(self, primary, secondary):
        self.primary = primary
        self.secondary = secondary

    def write(self, data) -> int:
        self.primary.write(data)
        self.secondary.write(data)
        return len(data)

    def flush(self) -> None:
        self.primary.flush()


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
