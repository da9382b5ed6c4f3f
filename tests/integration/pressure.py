"""Helpers for restores under pressure: a live writer, lifeboat's children, dumps' rows."""

from __future__ import annotations

import contextlib
import gzip
import os
import subprocess
import threading
import time
from pathlib import Path

import psycopg
from conftest import ROOT


def start_cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "lifeboat"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def child_pid(parent: int, name: str, timeout: float = 60.0) -> int:
    """The pid of `parent`'s child program `name`, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
                if fields.get("Name", "").strip() == name and fields.get("PPid", "").strip() == str(
                    parent
                ):
                    return int(pid)
        time.sleep(0.005)
    raise AssertionError(f"{name} never started under {parent}")


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Writer(threading.Thread):
    """An application session inserting one row every few milliseconds.

    `committed` holds the ids whose INSERT (autocommit) returned; after an
    error (a read-only database, a terminated session) it reconnects.
    """

    def __init__(self, url: str, table: str = "w", start: int = 1):
        super().__init__(daemon=True)
        self.url, self.table, self.next = url, table, start
        self.committed: list[int] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        conn = None
        while not self.halt.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.url, autocommit=True, application_name="writer")
                n = self.next
                self.next += 1
                conn.execute(f"INSERT INTO {self.table} (id) VALUES (%s)", (n,))
                self.committed.append(n)
            except psycopg.Error as exc:
                self.errors.append(" ".join(str(exc).split()))
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
                time.sleep(0.02)
            time.sleep(0.003)
        if conn is not None:
            conn.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def ids_in(url: str, dbname: str | None = None, table: str = "w") -> set[int]:
    kwargs = {"dbname": dbname} if dbname else {}
    with psycopg.connect(url, **kwargs) as conn:
        return {r[0] for r in conn.execute(f"SELECT id FROM {table}").fetchall()}


def dump_ids(path: Path, table: str = "public.w") -> set[int]:
    """Ids in a plain .sql.gz dump's COPY block of `table`."""
    ids, inside = set(), False
    with gzip.open(path, "rt") as fh:
        for line in fh:
            if line.startswith(f"COPY {table} "):
                inside = True
            elif inside and line == "\\.\n":
                break
            elif inside:
                ids.add(int(line.split("\t")[0]))
    return ids
