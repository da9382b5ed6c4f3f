"""Backup with an off-site copy (local + S3) against the local-only backup.

The S3 endpoint is moto's server on loopback, started here. It keeps every
object in memory and shares the 2 cores with pg_dump and lifeboat, so this
measures lifeboat's own overhead of teeing the stream into a multipart
upload, not S3's speed. Set LIFEBOAT_BENCH_SCALE small (e.g. 5) on machines
with little RAM: moto holds the whole object (about 1 GB RSS per 200 MB).
Targets (2 cores): local+S3 <= 1.6x the local-only wall time (moto's own CPU
included), lifeboat's own CPU time <= 1.3x (the cost of teeing and of the
part checksums), peak RSS of the backup process <= 200 MiB, and the object
in S3 identical to the local file.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, ROUNDS, big_database, measured_backup, report

BUCKET = "lifeboat-bench"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def main() -> int:
    _, url = big_database()
    moto, endpoint = start_moto()
    work = Path(tempfile.mkdtemp(prefix="lifeboat-bench-s3-", dir=ROOT / ".cache"))
    aws = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }
    try:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",  # noqa: S106 - moto accepts anything
        )
        client.create_bucket(Bucket=BUCKET)
        measured_backup(url, work / "warm", {})  # warm the caches once
        plain, runs = [], []
        for index in range(ROUNDS):  # interleaved, best of each side
            plain.append(measured_backup(url, work / "local", {}))
            offsite = {**aws, "BACKUP_S3_BUCKET": BUCKET}
            runs.append(measured_backup(url, work / f"s3-{index}", offsite))
        local = min(r[0] for r in plain)
        local_cpu = min(r[3] for r in plain)  # lifeboat's own, pg_dump's apart
        both = min(r[0] for r in runs)
        rss = max(r[2] for r in runs)
        cpu = min(r[3] for r in runs)
        dump = runs[-1][1]
        key = f"backups/daily/{dump.name}"
        digest = hashlib.sha256()
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
        while chunk := body.read(1 << 20):
            digest.update(chunk)
        with open(dump, "rb") as fh:
            same = digest.hexdigest() == hashlib.file_digest(fh, "sha256").hexdigest()
        size = dump.stat().st_size
    finally:
        moto.terminate()
        moto.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"backup of {size / 2**20:.0f} MiB (gzip): local only {local:.1f}s, "
        f"local + S3 (moto on loopback) {both:.1f}s (best of {ROUNDS} each); CPU of "
        f"lifeboat itself {local_cpu:.1f}s / {cpu:.1f}s, of its pg_dump "
        f"{min(r[4] for r in plain):.1f}s / {min(r[4] for r in runs):.1f}s"
    )
    ok = report(
        "backup with an off-site copy (one pipeline feeds the file and the multipart upload)",
        [
            (
                "time local+S3 vs local only",
                f"{both / local:.2f}x",
                "<= 1.60x",
                both / local <= 1.6,
            ),
            (
                "CPU of lifeboat, S3 vs local",
                f"{cpu / local_cpu:.2f}x",
                "<= 1.30x",
                cpu / local_cpu <= 1.3,
            ),
            ("peak RSS of lifeboat", f"{rss:.0f} MiB", "<= 200 MiB", rss <= 200),
            ("S3 object == local file", "yes" if same else "NO", "sha256", same),
        ],
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
