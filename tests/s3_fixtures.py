"""A real S3 protocol endpoint on loopback: moto's server, started by the tests.

`moto_server` is one server per session (objects live in its memory, so
tests keep them small); `s3` gives each test its own bucket and the
environment a user would set (`BACKUP_S3_BUCKET`, `AWS_ENDPOINT_URL`, keys).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# Never real credentials: these must not appear in any output.
ACCESS_KEY = "AKIALIFEBOATTEST0001"
SECRET_KEY = "lifeboat/S3cr3t+NeverPrinted"
_buckets = itertools.count(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def aws_env(endpoint: str, bucket: str) -> dict:
    """What a user exports for lifeboat; no config file may add anything."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
        "BACKUP_S3_BUCKET": bucket,
    }


@dataclass
class S3:
    endpoint: str
    bucket: str
    client: object
    env: dict

    def objects(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def unfinished_uploads(self) -> list[str]:
        found = self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", [])
        return [u["Key"] for u in found]


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(moto_server, monkeypatch) -> S3:
    """A fresh bucket on the session's moto server, and the environment to reach it."""
    import boto3

    bucket = f"lifeboat-test-{os.getpid()}-{next(_buckets)}"
    env = aws_env(moto_server, bucket)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    return S3(moto_server, bucket, client, env)


@contextlib.contextmanager
def moto_with_iam_auth():
    """A separate moto server that checks credentials (and knows none)."""
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


class CuttingProxy:
    """A TCP proxy to `upstream` that breaks every connection once `limit` bytes went up.

    Models an endpoint failing mid-upload: after the cut, new connections are
    accepted and closed at once, so retries fail too.
    """

    def __init__(self, upstream_port: int, limit: int):
        self.upstream_port = upstream_port
        self.limit = limit
        self.sent = 0
        self.cut = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.cut.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(65536):
                if counted:
                    with self._lock:
                        self.sent += len(data)
                        if self.sent > self.limit:
                            self._cut()
                            return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _cut(self) -> None:
        self.cut.set()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._cut()
        self.sock.close()


def tls_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signed for localhost and 127.0.0.1.

    Returns (ca.crt, server.crt, server.key). pgBackRest matches the endpoint's
    host name against DNS names only, so clients must say `localhost`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = folder / "ca.key", folder / "ca.crt"
    key, csr, crt = folder / "server.key", folder / "server.csr", folder / "server.crt"
    ext = folder / "server.ext"
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )

    def openssl(*args) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")  # quick to make and use
    openssl("req", "-x509", *ec, "-nodes", "-days", "2",
            "-subj", "/CN=lifeboat test CA", "-keyout", ca_key, "-out", ca_crt,
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    openssl("req", *ec, "-nodes", "-subj", "/CN=localhost",
            "-keyout", key, "-out", csr)  # fmt: skip
    openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "2", "-extfile", ext, "-out", crt)  # fmt: skip
    ca_crt.chmod(0o644)
    return ca_crt, crt, key


class TlsProxy:
    """HTTPS on loopback in front of a plain-HTTP endpoint (the moto server).

    Each connection ends with a TLS close_notify, as real S3 and MinIO do.
    moto's own `--ssl-cert` (werkzeug) closes the socket without one, and
    pgBackRest (OpenSSL 3) then fails every PUT answered with `Connection:
    close` with "TLS error [1:167772454] unexpected eof while reading".
    """

    def __init__(self, upstream_port: int, cert: Path, key: Path):
        import asyncio
        import ssl

        self.upstream_port = upstream_port
        self.connections = 0
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=context), self._loop
        ).result(10)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def endpoint(self) -> str:
        """host:port as pgBackRest's repo1-s3-endpoint/-storage-port want it."""
        return f"localhost:{self.port}"

    async def _serve(self, client_reader, client_writer) -> None:
        import asyncio

        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(reader, writer, half_close: bool) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            if half_close:  # the client finished its request: let the answer come back
                with contextlib.suppress(OSError):
                    writer.write_eof()

        upward = asyncio.ensure_future(pump(client_reader, up_writer, True))
        await pump(up_reader, client_writer, False)
        client_writer.close()  # over TLS: sends close_notify
        with contextlib.suppress(OSError, ConnectionError):
            await client_writer.wait_closed()
        up_writer.close()
        upward.cancel()

    def close(self) -> None:
        import asyncio

        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            await self._server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
