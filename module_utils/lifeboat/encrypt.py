"""Client-side encryption with age (https://age-encryption.org), by the stock `age` command.

A plain-format backup is `pg_dump | compress | age -r R1 -r R2 ...`, so anyone
with an identity decrypts it without lifeboat:
`age -d -i key.txt FILE.sql.gz.age | gunzip | psql`. A directory dump is
encrypted as one tar (dirtar.py): `age -d -i key.txt FILE.dir.tar.age | tar -x -C DIR`,
then `pg_restore -j N -d DB DIR`. Recipients are public
keys (argv is fine); the identity file is secret: only its path is ever
passed, its contents never leave the file. sha256 and size in the manifest
are over the encrypted bytes (what is stored and uploaded).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading

from . import children, naming
from .errors import ConfigError, DumpFailed, RestoreRefused, VerificationFailed

METHOD = "age"
MAGIC = b"age-encryption.org/"
CHUNK = 1 << 20
PROBE_BYTES = 256 << 10  # enough for the header and the first authenticated chunks
_SECRET = re.compile(r"AGE-SECRET-KEY-1[0-9A-Z]+", re.IGNORECASE)
_INSTALL = "Install the age package (`apt install age`, `dnf install age`)."


def find_age() -> str:
    path = shutil.which("age")
    if path is None:
        raise ConfigError("Client-side encryption needs the age command, not found.", _INSTALL)
    return path


def _clean(stderr: bytes) -> str:
    lines = [
        line
        for line in stderr.decode("utf-8", "replace").splitlines()
        if line.strip() and "report unexpected" not in line
    ]
    return _SECRET.sub("AGE-SECRET-KEY-(redacted)", " ".join(lines)).strip()


# --------------------------------------------------------------------------- settings


def _recipient_items(value) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        # From the environment: "age1...,age1..." (or spaces), or one recipients file path.
        if value.strip().startswith("age1"):
            return [part for part in re.split(r"[\s,]+", value) if part]
        return [value.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"Setting encrypt_recipients has the wrong shape: {value!r}.",
            "Give a list of age recipients (age1...) or paths of recipients files.",
        )
    return [v.strip() for v in value if v.strip()]


def check_config(merged: dict, fmt: str) -> dict:
    """encrypt_recipients / encrypt_identity_file, checked; returns Settings fields."""
    recipients = _recipient_items(merged.get("encrypt_recipients"))
    for item in recipients:
        if not (item.startswith(("age1", "ssh-")) or "/" in item or os.path.exists(item)):
            raise ConfigError(
                f"encrypt_recipients entry {item!r} is neither an age recipient nor a file.",
                "Use public keys as `age-keygen -y key.txt` prints them (age1...), or the "
                "path of a recipients file.",
            )
    if recipients:
        naming.extension(fmt, "none", encrypted=True)  # plain, or directory as one tar
    identity = merged.get("encrypt_identity_file") or None
    return {
        "encrypt_recipients": tuple(recipients),
        "encrypt_identity_file": os.path.expanduser(str(identity)) if identity else None,
    }


def recipient_args(recipients) -> list[str]:
    """age arguments: `-r KEY` for a recipient, `-R FILE` for a recipients file."""
    args = []
    for item in recipients:
        args += ["-r", item] if item.startswith(("age1", "ssh-")) else ["-R", item]
    return args


def describe(recipients) -> dict:
    """The manifest's `encryption`: the public recipients (a file's are read from it)."""
    listed = []
    for item in recipients:
        if item.startswith(("age1", "ssh-")):
            listed.append(item)
            continue
        try:
            with open(item) as fh:
                listed += [line.strip() for line in fh if line.strip() and not line.startswith("#")]
        except OSError as exc:
            raise ConfigError(
                f"Failed to read the recipients file {item}: {exc.strerror or exc}.",
                "Check encrypt_recipients (a path readable by the backup user).",
            ) from None
    return {"method": METHOD, "recipients": listed}


def check_recipients(recipients) -> None:
    """Encrypt nothing to the recipients: a bad key fails here, before pg_dump runs."""
    proc = subprocess.run(
        [find_age(), *recipient_args(recipients)],
        input=b"",
        capture_output=True,
        check=False,
        env=children.environment(),
    )
    if proc.returncode != 0:
        raise ConfigError(
            f"age refuses encrypt_recipients: {_clean(proc.stderr)}.",
            "Use public keys as `age-keygen -y key.txt` prints them (age1...).",
        )


def check_identity_file(path: str | None, location: str) -> str:
    """The identity file for an encrypted backup; RestoreRefused when unusable."""
    if not path:
        raise RestoreRefused(
            f"{location} is encrypted with age and no identity file is configured.",
            "Set lifeboat_encrypt_identity_file (encrypt_identity_file in lifeboat.yml, or "
            "LIFEBOAT_ENCRYPT_IDENTITY_FILE) to the age key file. Nothing was changed.",
        )
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise RestoreRefused(
            f"Cannot read the age identity file {path}: {exc.strerror or exc}.",
            "Check encrypt_identity_file (readable by the backup user only). Nothing was changed.",
        ) from None
    if mode & 0o007:
        raise RestoreRefused(
            f"The age identity file {path} is accessible to other users (mode {mode & 0o777:04o}).",
            f"Run `chmod 600 {path}`. Nothing was changed.",
        )
    return path


# --------------------------------------------------------------------------- encrypt


class Encryptor:
    """A writable stream: bytes written go through `age -r ...` into `sink`.

    A thread moves age's output into the sink, so neither side can block the
    other. A sink error (disk full) stops age and is raised by the next write
    or by close(); close() also checks age's exit code.
    """

    def __init__(self, sink, recipients):
        self.sink = sink
        self.error: BaseException | None = None
        self._errfile = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            [find_age(), *recipient_args(recipients)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errfile,
            env=children.environment(),
        )
        self._thread = threading.Thread(target=self._pump, name="age-out", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while chunk := self.proc.stdout.read1(CHUNK):
                self.sink.write(chunk)
        except BaseException as exc:  # handed to the writer
            self.error = exc
            with contextlib.suppress(OSError):
                self.proc.kill()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            self.proc.stdin.write(data)
        except (BrokenPipeError, ValueError):
            self._finish()
            raise DumpFailed("age stopped while encrypting the backup.", _HINT) from None
        return len(data)

    def flush(self) -> None:
        pass

    def _finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        self._thread.join()
        returncode = self.proc.wait()
        self.proc.stdout.close()
        if self.error is not None:
            raise self.error
        if returncode != 0:
            self._errfile.seek(0)
            raise DumpFailed(
                f"age failed while encrypting the backup (exit {returncode}): "
                f"{_clean(self._errfile.read())}.",
                _HINT,
            )

    def close(self) -> None:
        """Finish the age stream (its final chunk) and check everything went well."""
        try:
            self._finish()
        finally:
            self._errfile.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        self._thread.join()
        self.proc.wait()
        with contextlib.suppress(Exception):
            self.proc.stdout.close()
        self._errfile.close()


_HINT = "Nothing was kept. Check the recipients (encrypt_recipients) and run the backup again."


# --------------------------------------------------------------------------- decrypt


class Decryptor:
    """A readable stream of `age -d -i IDENTITY` over `source` (fed by a thread).

    read() returns b"" only once age has exited 0: age authenticates every
    chunk and the end of the stream, so a wrong key, a changed byte or a
    truncation raises VerificationFailed, never a short plaintext.
    """

    def __init__(self, source, identity: str, location: str):
        self.source = source
        self.location = location
        self.error: BaseException | None = None
        self._errfile = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._done = False
        self.proc = subprocess.Popen(
            [find_age(), "-d", "-i", identity],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errfile,
            env=children.environment(),
        )
        self._thread = threading.Thread(target=self._feed, name="age-in", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        try:
            while chunk := self.source.read(CHUNK):
                self.proc.stdin.write(chunk)
        except BrokenPipeError:
            pass  # age stopped: its exit code says why
        except BaseException as exc:
            self.error = exc
            with contextlib.suppress(OSError):
                self.proc.kill()
        finally:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        data = self.proc.stdout.read1(CHUNK if n is None or n < 0 else n)
        if not data:
            self.finish()
        return data

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        """Wait for age and the feeder; raise when the stream did not decrypt completely."""
        if self._done:
            return
        while self.proc.stdout.read1(CHUNK):
            pass  # plaintext after the consumer's end (there should be none)
        self._thread.join()
        returncode = self.proc.wait()
        self._done = True
        if self.error is not None:
            raise self.error
        if returncode != 0:
            self._errfile.seek(0)
            raise VerificationFailed(
                f"Backup {self.location} could not be decrypted: {_clean(self._errfile.read())}.",
                "Check encrypt_identity_file (the key matching one of the manifest's "
                "recipients); if the key is right, the file is corrupt: use another backup.",
            )

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self._thread.join()
        self.proc.wait()
        with contextlib.suppress(Exception):
            self.proc.stdout.close()
        self._errfile.close()


def method_of(manifest: dict | None) -> str | None:
    """The encryption method a manifest records (None: not encrypted); refuses unknown ones."""
    info = (manifest or {}).get("encryption")
    if not info:
        return None
    method = info.get("method") if isinstance(info, dict) else info
    if method != METHOD:
        raise VerificationFailed(
            f"Backup is encrypted with {method!r}, which this lifeboat cannot decrypt.",
            "Decrypt it with the tool that made it, or use another backup.",
        )
    return method


def probe(path: str, identity: str, location: str) -> None:
    """Prove `identity` opens the backup: decrypt its first bytes (nothing is touched yet)."""
    with open(path, "rb") as fh:
        head = fh.read(PROBE_BYTES)
        whole = not fh.read(1)
    proc = subprocess.run(
        [find_age(), "-d", "-i", identity],
        input=head,
        capture_output=True,
        check=False,
        env=children.environment(),
    )
    # A prefix ends mid-stream (age then fails), but what it decrypted proves the key.
    if proc.returncode == 0 or (proc.stdout and not whole):
        return
    raise RestoreRefused(
        f"The age identity file {identity} cannot decrypt {location}: {_clean(proc.stderr)}.",
        "Use the key matching one of the recipients in the backup's manifest "
        "(encrypt_identity_file). Nothing was changed.",
    )


def is_age(head: bytes) -> bool:
    return head.startswith(MAGIC)
